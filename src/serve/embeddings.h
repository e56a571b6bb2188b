#pragma once
// /v1/embeddings' model work: a prompt's final hidden states (after the
// model's final norm, what lm_head reads), pooled over its tokens.
//
// Thread safety: runs the model, so only where a model step may run (the
// engine's stepping thread: Engine::submit_task).
#include <cstdint>
#include <vector>

#include "finmoe/model.h"
#include "finmoe/server.h"

namespace finmoe::serve {

// float32 [hidden_size]: the last token's hidden state or the mean over all
// tokens, divided by its L2 norm when `normalize`, computed with serving
// adapter `adapter` (serving_adapters.h; 0 = the base model). `ids` must be
// non-empty and within the vocabulary. Throws Error for an empty prompt.
std::vector<float> embed_prompt(Transformer& model, const std::vector<int32_t>& ids, EmbeddingPooling pooling,
                                bool normalize, int32_t adapter = 0);

}  // namespace finmoe::serve
