#pragma once
// The serving engine's scheduling policy (engine.h), free of tensors.
//
// FCFS continuous batching with chunked prefill over a BlockManager:
//  * running sequences go first, in admission order: a decode token each, or
//    the next chunk of an unfinished prefill;
//  * a decode token needs a KV slot; when no block is free the most recently
//    admitted running sequence is preempted (blocks freed, back to the FRONT
//    of the waiting queue to be recomputed from prompt + generated tokens);
//    if that is the sequence itself it waits too;
//  * then waiting sequences are admitted in order while the token budget,
//    max_num_seqs and the free blocks allow, unless this step preempted; a
//    prefix-cache hit skips the prompt's cached blocks.
// The first running sequence can always proceed once everything younger is
// preempted, provided no sequence outgrows the whole cache (the engine caps
// sequence length), so the schedule never deadlocks.
//
// Not thread-safe: owned by the stepping thread.
#include <cstdint>
#include <deque>
#include <vector>

#include "finmoe/block_manager.h"

namespace finmoe {

// The scheduler's view of one request.
struct Sequence {
  enum class State { New, Waiting, Running, Finished };
  int64_t id = 0;               // also the BlockManager sequence id
  std::vector<int32_t> tokens;  // prompt + generated so far
  // Tokens whose KV is in the cache. While running, tokens.size() is either
  // the BlockManager's length (prefilling) or one more (decode: the newest
  // token's slot is taken by the next schedule()).
  int64_t num_computed = 0;
  int64_t first_cached = -1;  // prefix-cache hit at the first admission, -1 before
  uint64_t cache_salt = 0;    // prefix-cache partition (the serving adapter's id)
  State state = State::New;
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int64_t num_tokens = 0;  // tokens[seq->num_computed, +num_tokens) run this step
  bool decode = false;     // a decode token rather than a prefill chunk
};

class Scheduler {
 public:
  // blocks must outlive the scheduler; limits > 0.
  Scheduler(BlockManager& blocks, int64_t max_num_seqs, int64_t max_batched_tokens);

  // Queues a new sequence (>= 1 token) at the back of the waiting queue.
  void add(Sequence* seq);
  // Takes a sequence out wherever it is (finished or aborted): blocks freed.
  void remove(Sequence* seq);

  // Plans one step: the tokens each scheduled sequence runs, decodes and
  // chunks of running sequences first (admission order), then newly admitted
  // ones. Takes the decode slots and may preempt. Empty when there is nothing
  // to run.
  std::vector<ScheduledSeq> schedule();
  // After the step ran: advances num_computed and tells the BlockManager.
  void computed(const std::vector<ScheduledSeq>& step);

  bool idle() const { return running_.empty() && waiting_.empty(); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return preemptions_; }
  // Every waiting and running sequence, lowest id first (for aborting everything).
  std::vector<Sequence*> all() const;

 private:
  void preempt(Sequence* seq);

  BlockManager& blocks_;
  int64_t max_num_seqs_;
  int64_t max_batched_tokens_;
  std::deque<Sequence*> waiting_;  // front is served first
  std::deque<Sequence*> running_;  // admission order; back is the youngest
  int64_t preemptions_ = 0;
};

}  // namespace finmoe
