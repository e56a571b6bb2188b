#include "train/losses.h"

#include "finmoe/error.h"

namespace finmoe {

namespace {

// Flat indices [N] of the labelled positions of labels [B,T].
torch::Tensor label_positions(const torch::Tensor& labels) {
  return labels.reshape({-1}).ne(kIgnoreLabel).nonzero().squeeze(1);
}

}  // namespace

torch::Tensor lm_loss_sum(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t V = logits.size(-1);
  if (labels.sizes() != logits.sizes().slice(0, logits.dim() - 1))
    throw Error("lm loss: labels must have logits' shape without the vocabulary dimension");
  auto flat = logits.reshape({-1, V});  // [B*T, V]
  auto target = labels.reshape({-1}).to(logits.device(), torch::kInt64);
  return torch::nn::functional::cross_entropy(flat, target,
                                              torch::nn::functional::CrossEntropyFuncOptions()
                                                  .ignore_index(kIgnoreLabel)
                                                  .reduction(torch::kSum));
}

torch::Tensor forward_kl_sum(const torch::Tensor& student_logits,
                             const torch::Tensor& teacher_logits, const torch::Tensor& labels,
                             double temperature) {
  const int64_t V = student_logits.size(-1);
  if (teacher_logits.size(-1) != V)
    throw Error("distillation: the teacher's vocabulary (" +
                std::to_string(teacher_logits.size(-1)) + ") differs from the student's (" +
                std::to_string(V) + ")");
  auto idx = label_positions(labels).to(student_logits.device());               // [N]
  auto s = student_logits.reshape({-1, V}).index_select(0, idx) / temperature;  // [N,V]
  auto t = teacher_logits.detach().reshape({-1, V}).index_select(0, idx).to(s.scalar_type()) /
           temperature;  // [N,V]
  auto log_ps = torch::log_softmax(s, -1);
  auto log_pt = torch::log_softmax(t, -1);
  auto kl = (log_pt.exp() * (log_pt - log_ps)).sum();  // sum over N and V
  return kl * (temperature * temperature);
}

}  // namespace finmoe
