#include "serve/scheduler.h"

#include <algorithm>
#include <string>

#include "finmoe/error.h"

namespace finmoe {

Scheduler::Scheduler(BlockManager& blocks, int64_t max_num_seqs, int64_t max_batched_tokens)
    : blocks_(blocks), max_num_seqs_(max_num_seqs), max_batched_tokens_(max_batched_tokens) {
  if (max_num_seqs <= 0 || max_batched_tokens <= 0)
    throw Error("Scheduler: max_num_seqs (" + std::to_string(max_num_seqs) +
                ") and max_batched_tokens (" + std::to_string(max_batched_tokens) +
                ") must be positive");
}

void Scheduler::add(Sequence* seq) {
  if (seq->tokens.empty())
    throw Error("Scheduler: sequence " + std::to_string(seq->id) + " is empty");
  if (seq->state != Sequence::State::New)
    throw Error("Scheduler: sequence " + std::to_string(seq->id) + " was already added");
  seq->state = Sequence::State::Waiting;
  seq->num_computed = 0;
  waiting_.push_back(seq);
}

void Scheduler::remove(Sequence* seq) {
  if (seq->state == Sequence::State::Running) {
    blocks_.free(seq->id);
    running_.erase(std::find(running_.begin(), running_.end(), seq));
  } else if (seq->state == Sequence::State::Waiting) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  }
  seq->state = Sequence::State::Finished;
}

void Scheduler::preempt(Sequence* seq) {
  // Recompute rather than swap: the KV is rebuilt from the tokens on readmission.
  blocks_.free(seq->id);
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  seq->num_computed = 0;
  seq->state = Sequence::State::Waiting;
  waiting_.push_front(seq);
  ++preemptions_;
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> out;
  int64_t budget = max_batched_tokens_;
  bool preempted = false;

  // Running sequences, oldest first. Victims come from the back, which this
  // loop has not reached yet, so nothing already in `out` is preempted.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence* s = running_[i];
    const int64_t held = blocks_.num_tokens(s->id);
    if (s->num_computed < held) {  // an unfinished prefill: its blocks are all allocated
      const int64_t n = std::min(held - s->num_computed, budget);
      out.push_back({s, n, false});
      budget -= n;
      continue;
    }
    // Decode: the newest token needs a KV slot.
    if (static_cast<int64_t>(s->tokens.size()) != held + 1)
      throw Error("Scheduler: sequence " + std::to_string(s->id) + " has " +
                  std::to_string(s->tokens.size()) + " tokens, " + std::to_string(held) +
                  " in the cache: not ready to decode");
    bool self_preempted = false;
    while (!blocks_.append_token(s->id, s->tokens.back())) {
      Sequence* victim = running_.back();
      preempt(victim);
      preempted = true;
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // s was the youngest: nothing after it
    out.push_back({s, 1, true});
    budget -= 1;
  }

  // Admission, FCFS: stop at the first sequence that does not fit, so a long
  // prompt is not starved by shorter ones behind it.
  while (!preempted && budget > 0 && !waiting_.empty() && num_running() < max_num_seqs_) {
    Sequence* s = waiting_.front();
    const auto cached = blocks_.allocate(s->id, s->tokens, s->cache_salt);
    if (!cached) break;
    waiting_.pop_front();
    s->state = Sequence::State::Running;
    s->num_computed = *cached;
    if (s->first_cached < 0) s->first_cached = *cached;
    running_.push_back(s);
    const int64_t n = std::min(static_cast<int64_t>(s->tokens.size()) - *cached, budget);
    out.push_back({s, n, false});
    budget -= n;
  }
  return out;
}

void Scheduler::computed(const std::vector<ScheduledSeq>& step) {
  for (const auto& e : step) {
    e.seq->num_computed += e.num_tokens;
    blocks_.mark_computed(e.seq->id, e.seq->num_computed);
  }
}

std::vector<Sequence*> Scheduler::all() const {
  std::vector<Sequence*> out(waiting_.begin(), waiting_.end());
  out.insert(out.end(), running_.begin(), running_.end());
  std::sort(out.begin(), out.end(), [](Sequence* a, Sequence* b) { return a->id < b->id; });
  return out;
}

}  // namespace finmoe
