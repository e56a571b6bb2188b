#pragma once
// Training losses over a micro-batch. Each returns a SUM over the positions
// that have a label (labels != -100), so the trainer can divide by the label
// tokens of the whole accumulation window (every token weighs the same,
// however the window is split into micro-batches).
#include <torch/torch.h>

namespace finmoe {

constexpr int64_t kIgnoreLabel = -100;

// sum_t -log softmax(logits[t])[labels[t]] over labelled positions.
// logits [B,T,V] (float32/64), labels [B,T] int64 -> scalar of logits' dtype.
torch::Tensor lm_loss_sum(const torch::Tensor& logits, const torch::Tensor& labels);

// Forward KL of generalized knowledge distillation (YouZhi §3.2, GKD with
// forward KL): sum over labelled positions t of
//   tau^2 * KL(p_T || p_S) = tau^2 * sum_v p_T(v) (log p_T(v) - log p_S(v)),
//   p_T = softmax(teacher[t] / tau), p_S = softmax(student[t] / tau).
// The tau^2 factor keeps gradient magnitudes comparable across temperatures
// (Hinton et al.). The teacher is a constant (no gradient flows into it).
// student, teacher [B,T,V]; labels [B,T] -> scalar.
torch::Tensor forward_kl_sum(const torch::Tensor& student_logits,
                             const torch::Tensor& teacher_logits, const torch::Tensor& labels,
                             double temperature);

}  // namespace finmoe
