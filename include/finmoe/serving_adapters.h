#pragma once
// Serving several adapters over one base model in one running batch (vLLM's
// multi-LoRA, and ESFT deltas, which no other server serves this way).
//
// Each adapter is attached under an id >= 1. A request names an id (0 = the
// base model, RequestParams::adapter in engine.h); in a batch mixing ids,
// every token row runs its own request's adapter:
//   LoRA   y = x·Wᵀ + b + scaling · (x·Aᵀ)·Bᵀ on the adapted layers, as PEFT
//          computes one adapter (the term in float32, the sum in y's dtype)
//   ESFT   the delta's trained routed experts (and shared experts) replace
//          the base's for that request's tokens; the router is the base's
//          (ESFT freezes it), so tokens route as in the base model
// A sequence's cached KV belongs to its adapter: prefix caching never shares
// blocks across ids. Rows under adapters run eagerly (no CUDA graph).
//
// Thread safety: attach while no forward pass runs. Errors: finmoe::Error
// naming the directory, file or tensor.
#include <cstdint>
#include <string>

namespace finmoe {

class Transformer;

struct ServingAdapterInfo {
  int64_t modules = 0;  // LoRA: layers adapted; ESFT: expert modules replaced
  int64_t params = 0;   // elements of the adapter's tensors
};

// A PEFT LoRA adapter directory (lora.h's layout) under `id`. Throws Error for
// an id < 1 or already attached, an adapter that does not fit the model
// (lora.h's checks), or a target served outside the batch's rows (MLA's
// kv_b_proj, which runs on cached latents).
ServingAdapterInfo attach_serving_lora(Transformer& model, const std::string& adapter_dir,
                                       int32_t id);

// An ESFT delta directory (esft.h, docs/formats/esft.md) over this model
// under `id`. Throws Error for an id < 1 or already attached, a delta that
// does not fit the model (apply_esft_delta's checks), or one that trained
// non-expert modules (serve that delta as a model of its own).
ServingAdapterInfo attach_serving_esft(Transformer& model, const std::string& delta_dir,
                                       int32_t id);

// Whether adapter `id` is attached (either kind).
bool has_serving_adapter(const Transformer& model, int32_t id);

}  // namespace finmoe
