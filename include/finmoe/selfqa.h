#pragma once
// Self-QA (`finmoe data selfqa`; FinMoE §4.2 after Zhang and Yang 2023):
// question-answer pairs generated from unlabelled documents by prompting an
// OpenAI-compatible chat endpoint (`finmoe serve` or any other): first the
// model writes questions a document answers, then it answers each question
// from the document; empty and duplicate pairs are dropped.
// docs/data_tools.md.
//
// Resumable: each finished document is appended (and flushed) to
// OUT.partial as one line {"doc_line", "qa": [...]}; a run stopped by an
// error or a signal continues with --resume, skipping the documents there.
// When every document is done, OUT is written atomically and OUT.partial
// removed.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "finmoe/chat_endpoint.h"

namespace finmoe {

struct SelfQaOptions : ChatEndpointOptions {  // the endpoint: url, model, retries, ...
  int questions_per_doc = 3;
  int64_t max_doc_chars =
      2000;             // longer documents are cut into pieces of at most this many code points
  int concurrency = 1;  // documents in flight
  bool resume = false;
  std::string field;  // document text field ("" -> "text")
  bool skip_bad = false;
};

struct SelfQaResult {
  int64_t documents = 0, resumed = 0, requests = 0, retried = 0;
  int64_t pairs = 0, duplicates = 0, empty = 0, skipped = 0;
};

// Questions in a model's reply: one per line, list markers ("1.", "1)",
// "1、", "-", "Q:", "问题1：") removed, lines without a question dropped
// (a question ends with ? or ？ after trimming).
std::vector<std::string> parse_questions(const std::string& reply);

SelfQaResult selfqa_jsonl(const std::string& in, const std::string& out, const SelfQaOptions& opt,
                          const std::function<void(const std::string&)>& log = {},
                          const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace finmoe
