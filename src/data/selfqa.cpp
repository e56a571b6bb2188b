// Self-QA through an OpenAI-compatible endpoint (finmoe/selfqa.h).
#include "finmoe/selfqa.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "data/jsonl.h"
#include "data/resume_log.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

bool has_cjk(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0xE4 && c <= 0xE9) return true;
  return false;
}

// Pieces of at most `max` code points, cut after a line break or 。 in the
// last third of a piece when there is one.
std::vector<std::string> pieces(const std::string& text, int64_t max) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < text.size(); ++i)
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) starts.push_back(i);
  starts.push_back(text.size());
  std::vector<std::string> out;
  size_t cp = 0;
  const size_t n = starts.size() - 1;
  while (cp < n) {
    size_t end = std::min(n, cp + size_t(max));
    if (end < n) {
      for (size_t k = end; k > cp + size_t(max) * 2 / 3; --k) {
        const std::string_view prev(text.data() + starts[k - 1], starts[k] - starts[k - 1]);
        if (prev == "\n" || prev == "。") {
          end = k;
          break;
        }
      }
    }
    const std::string p = trim(text.substr(starts[cp], starts[end] - starts[cp]));
    if (!p.empty()) out.push_back(p);
    cp = end;
  }
  return out;
}

std::string normalized(const std::string& s) {
  std::string out;
  for (unsigned char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
      out += char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return out;
}

std::string question_prompt(const std::string& doc, int n) {
  if (has_cjk(doc))
    return "以下是一段没有标注的文档。请根据文档内容提出" + std::to_string(n) +
           "个问题，这些问题必须能仅凭文档内容回答。每行写一个问题，以问号结尾，不要写答案。\n\n文"
           "档：\n" +
           doc;
  return "Below is an unlabelled document. Write " + std::to_string(n) +
         " questions that the document alone answers. One question per line, each ending with a "
         "question mark; "
         "no answers.\n\nDocument:\n" +
         doc;
}

std::string answer_prompt(const std::string& doc, const std::string& q) {
  if (has_cjk(doc))
    return "请仅根据下面的文档回答问题，回答要完整准确，不要提及“文档”本身。\n\n文档：\n" + doc +
           "\n\n问题：" + q;
  return "Answer the question from the document below only. Answer completely and do not mention "
         "\"the document\".\n\nDocument:\n" +
         doc + "\n\nQuestion: " + q;
}

}  // namespace

std::vector<std::string> parse_questions(const std::string& reply) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= reply.size()) {
    size_t e = reply.find('\n', b);
    if (e == std::string::npos) e = reply.size();
    std::string l = trim(reply.substr(b, e - b));
    b = e + 1;
    // list markers
    for (const std::string m : {"- ", "* ", "• ", "Q:", "Q：", "问：", "问题："})
      if (l.rfind(m, 0) == 0) l = trim(l.substr(m.size()));
    if (l.rfind("问题", 0) == 0) {
      size_t k = std::string("问题").size();
      while (k < l.size() && l[k] >= '0' && l[k] <= '9') ++k;
      if (l.compare(k, 3, "：") == 0)
        l = trim(l.substr(k + 3));
      else if (k < l.size() && l[k] == ':')
        l = trim(l.substr(k + 1));
    }
    size_t k = 0;
    while (k < l.size() && l[k] >= '0' && l[k] <= '9') ++k;
    if (k > 0 && k <= 3) {
      if (l.compare(k, 1, ".") == 0 || l.compare(k, 1, ")") == 0)
        l = trim(l.substr(k + 1));
      else if (l.compare(k, 3, "、") == 0 || l.compare(k, 3, "．") == 0)
        l = trim(l.substr(k + 3));
    }
    const bool question =
        (!l.empty() && l.back() == '?') || (l.size() >= 3 && l.compare(l.size() - 3, 3, "？") == 0);
    if (question && l.size() > 3) out.push_back(l);
    if (e == reply.size()) break;
  }
  return out;
}

SelfQaResult selfqa_jsonl(const std::string& in, const std::string& out, const SelfQaOptions& opt,
                          const std::function<void(const std::string&)>& log,
                          const std::function<void(int64_t, int64_t)>& progress) {
  if (opt.questions_per_doc < 1 || opt.questions_per_doc > 50)
    throw Error("selfqa: --questions must be in [1, 50]");
  if (opt.max_doc_chars < 100) throw Error("selfqa: --max-doc-chars must be at least 100");
  if (opt.retries < 0 || opt.concurrency < 1)
    throw Error("selfqa: --retries >= 0 and --concurrency >= 1");
  if (!(opt.requests_per_s >= 0) || !(opt.timeout_s > 0) || !(opt.backoff_s >= 0))
    throw Error("selfqa: --rps >= 0, --timeout > 0, --backoff >= 0");
  check_chat_endpoint_options(opt, "--url");
  data::refuse_existing(out, "--out");
  ChatEndpoint endpoint(opt);
  SelfQaResult r;
  // documents done in an earlier run
  data::ResumeLog part(out, "doc_line", opt.resume, log);
  const std::string partial = part.path();
  r.resumed = part.resumed();

  data::JsonlReader reader(in, opt.skip_bad);
  reader.on_skip = log;
  const std::string field = opt.field.empty() ? "text" : opt.field;
  struct Doc {
    int64_t line;
    std::string text;
  };
  std::vector<Doc> batch;
  std::string failure;
  auto run_batch = [&] {
    std::atomic<size_t> next{0};
    std::mutex fail_mu;
    auto work = [&] {
      for (size_t i; (i = next.fetch_add(1)) < batch.size();) {
        {
          std::lock_guard<std::mutex> lock(fail_mu);
          if (!failure.empty()) return;
        }
        try {
          nlohmann::json qa = nlohmann::json::array();
          for (const auto& piece : pieces(batch[i].text, opt.max_doc_chars)) {
            const auto questions =
                parse_questions(endpoint.chat(question_prompt(piece, opt.questions_per_doc)));
            for (size_t q = 0; q < questions.size() && q < size_t(opt.questions_per_doc); ++q)
              qa.push_back({{"question", questions[q]},
                            {"answer", trim(endpoint.chat(answer_prompt(piece, questions[q])))}});
          }
          part.append({{"doc_line", batch[i].line}, {"qa", qa}});
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(fail_mu);
          if (failure.empty()) failure = in + ":" + std::to_string(batch[i].line) + ": " + e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int>(opt.concurrency, int(batch.size())); ++t)
      pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    batch.clear();
    if (!failure.empty())
      throw Error(failure + " (the documents finished so far are kept in " + partial +
                  "; --resume continues)");
    if (progress) progress(reader.bytes_read(), reader.size());
  };
  nlohmann::json rec;
  while (reader.next(rec)) {
    bool ok = false;
    const std::string text = data::string_field(rec, field, &ok);
    if (!ok) {
      reader.bad_record("no string field '" + field + "'");
      continue;
    }
    ++r.documents;
    if (part.done(reader.line()) || trim(text).empty()) continue;
    batch.push_back({reader.line(), text});
    if (batch.size() >= size_t(opt.concurrency) * 4) run_batch();
  }
  run_batch();
  r.skipped = reader.skipped();
  r.requests = endpoint.requests;
  r.retried = endpoint.retried;

  // every document is done: pairs in document order, empty and duplicate ones dropped
  data::JsonlWriter writer(out);
  std::unordered_set<std::string> seen;
  for (const auto& [doc, line] : part.read_all())
    for (const auto& p : line.at("qa")) {
      const std::string q = p.at("question"), a = p.at("answer");
      if (trim(q).empty() || trim(a).empty()) {
        ++r.empty;
        continue;
      }
      if (!seen.insert(normalized(q) + "\x1f" + normalized(a)).second ||
          !seen.insert("q\x1f" + normalized(q)).second) {
        ++r.duplicates;
        continue;
      }
      writer.write({{"messages",
                     {{{"role", "user"}, {"content", q}}, {{"role", "assistant"}, {"content", a}}}},
                    {"source_line", doc}});
    }
  writer.commit();
  r.pairs = writer.written();
  part.remove();
  return r;
}

}  // namespace finmoe
