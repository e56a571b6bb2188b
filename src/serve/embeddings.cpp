// /v1/embeddings' model work (embeddings.h).
#include "serve/embeddings.h"

#include "finmoe/error.h"
#include "model/adapter_rows.h"
#include "model/transformer.h"

namespace finmoe::serve {

std::vector<float> embed_prompt(Transformer& model, const std::vector<int32_t>& ids, EmbeddingPooling pooling,
                                bool normalize, int32_t adapter) {
  if (ids.empty()) throw Error("embed_prompt: the prompt has no tokens");
  auto* impl = dynamic_cast<TransformerImpl*>(&model.module());
  if (!impl) throw Error("embed_prompt: internal: the model is not a TransformerImpl");
  torch::NoGradGuard no_grad;
  std::vector<int64_t> wide(ids.begin(), ids.end());
  const auto tokens = torch::tensor(wide, torch::kInt64).view({1, -1}).to(model.device());
  const AdapterRows rows(std::vector<int32_t>(ids.size(), adapter), model.device());
  AdapterRowsScope scope(&rows);
  const auto hidden = impl->final_hidden(tokens, {})[0].to(torch::kFloat32);  // [T, D]
  auto v = pooling == EmbeddingPooling::Last ? hidden[hidden.size(0) - 1] : hidden.mean(0);
  if (normalize) v = v / v.norm().clamp_min(1e-12);  // as torch.nn.functional.normalize
  v = v.contiguous().to(torch::kCPU);
  return {v.data_ptr<float>(), v.data_ptr<float>() + v.numel()};
}

}  // namespace finmoe::serve

namespace finmoe {

EmbeddingPooling embedding_pooling_from_string(std::string_view name) {
  if (name == "last") return EmbeddingPooling::Last;
  if (name == "mean") return EmbeddingPooling::Mean;
  throw Error("embedding pooling '" + std::string(name) + "' unknown (last, mean)");
}

}  // namespace finmoe
