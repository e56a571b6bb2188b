// consumer MODEL_DIR TOKENIZER_DIR TEXT: prints the model's config and the
// text's token ids through finmoe's installed headers and libraries.
#include <cstdio>
#include <exception>

#include "finmoe/config.h"
#include "finmoe/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: consumer MODEL_DIR TOKENIZER_DIR TEXT\n");
    return 2;
  }
  try {
    const finmoe::ModelConfig config = finmoe::ModelConfig::load(argv[1]);
    std::printf("model_type=%s\nnum_hidden_layers=%lld\n", config.model_type.c_str(),
                static_cast<long long>(config.num_hidden_layers));
    const finmoe::Tokenizer tok = finmoe::Tokenizer::from_dir(argv[2]);
    std::printf("ids=");
    const auto ids = tok.encode(argv[3]);
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? "," : "", ids[i]);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
