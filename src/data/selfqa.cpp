// Self-QA through an OpenAI-compatible endpoint (finmoe/selfqa.h).
#include "finmoe/selfqa.h"

#include <httplib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>
#include <unordered_set>

#include "data/jsonl.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void sleep_s(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

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

class Endpoint {
 public:
  explicit Endpoint(const SelfQaOptions& opt) : opt_(opt), limiter_(opt.requests_per_s) {
    const size_t scheme = opt.url.find("://");
    if (opt.url.empty() || scheme == std::string::npos)
      throw Error("--url: expected http://HOST:PORT[/PATH], got '" + opt.url + "'");
    const size_t slash = opt.url.find('/', scheme + 3);
    base_ = opt.url.substr(0, slash);
    std::string prefix = slash == std::string::npos ? "" : opt.url.substr(slash);
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    if (prefix.size() >= 3 && prefix.compare(prefix.size() - 3, 3, "/v1") == 0)
      prefix.resize(prefix.size() - 3);
    path_ = prefix + "/v1/chat/completions";
  }

  std::string chat(const std::string& prompt) {
    const nlohmann::json body = {{"model", opt_.model},
                                 {"messages", {{{"role", "user"}, {"content", prompt}}}},
                                 {"max_tokens", opt_.max_tokens},
                                 {"temperature", opt_.temperature}};
    const std::string payload = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    httplib::Headers headers;
    if (!opt_.api_key.empty()) headers.emplace("Authorization", "Bearer " + opt_.api_key);
    std::string last;
    for (int attempt = 0; attempt <= opt_.retries; ++attempt) {
      if (attempt > 0) {
        ++retried;
        sleep_s(opt_.backoff_s * std::pow(2.0, attempt - 1));
      }
      sleep_s(limiter_.acquire(now_s()) - now_s());
      httplib::Client cli(base_);
      const auto secs = std::chrono::duration<double>(opt_.timeout_s);
      cli.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
      cli.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
      cli.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
      ++requests;
      auto res = cli.Post(path_, headers, payload, "application/json");
      if (!res) {
        last = "connection failed (" + httplib::to_string(res.error()) + ")";
        continue;
      }
      if (res->status == 429 || res->status >= 500) {
        last = "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 200);
        continue;
      }
      if (res->status != 200)
        throw Error(opt_.url + path_ + ": HTTP " + std::to_string(res->status) + ": " +
                    res->body.substr(0, 300));
      nlohmann::json j;
      try {
        j = parse_json(res->body, opt_.url + path_ + " reply");
      } catch (const Error& e) {
        throw Error(std::string(e.what()));
      }
      if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() ||
          j["choices"].empty() || !j["choices"][0].is_object() ||
          !j["choices"][0].contains("message") || !j["choices"][0]["message"].is_object() ||
          !j["choices"][0]["message"].contains("content") ||
          !j["choices"][0]["message"]["content"].is_string())
        throw Error(opt_.url + path_ + ": reply without a string choices[0].message.content");
      return j["choices"][0]["message"]["content"].get<std::string>();
    }
    throw Error(opt_.url + path_ + ": gave up after " + std::to_string(opt_.retries + 1) +
                " tries: " + last);
  }

  std::atomic<int64_t> requests{0}, retried{0};

 private:
  const SelfQaOptions& opt_;
  RateLimiter limiter_;
  std::string base_, path_;
};

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
  data::refuse_existing(out, "--out");
  Endpoint endpoint(opt);
  const std::string partial = out + ".partial";
  SelfQaResult r;

  // documents done in an earlier run
  std::unordered_set<int64_t> done;
  struct stat st {};
  if (::stat(partial.c_str(), &st) == 0) {
    if (!opt.resume)
      throw Error(
          partial +
          " exists: an earlier run stopped before the end; --resume continues it (or remove it)");
    std::ifstream p(partial);
    std::string line;
    int64_t n = 0;
    std::vector<std::string> good;
    while (std::getline(p, line)) {
      ++n;
      try {
        const auto j = parse_json(line, partial + ":" + std::to_string(n));
        done.insert(j.at("doc_line").get<int64_t>());
        good.push_back(line);
      } catch (const std::exception&) {
        // a line cut by the stop: the document is done again
        if (log)
          log(partial + ":" + std::to_string(n) +
              ": incomplete line dropped; that document is redone");
      }
    }
    // rewrite without the cut line so that appends start on a line of their own
    std::string all;
    for (const auto& g : good) all += g + "\n";
    write_file_atomic(partial, all);
    r.resumed = int64_t(done.size());
  }
  std::ofstream part(partial, std::ios::app | std::ios::binary);
  if (!part) throw Error(partial + ": cannot open for appending");
  std::mutex part_mu;

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
          const std::string line = nlohmann::json{{"doc_line", batch[i].line}, {"qa", qa}}.dump(
              -1, ' ', false, nlohmann::json::error_handler_t::replace);
          std::lock_guard<std::mutex> lock(part_mu);
          part << line << "\n";
          part.flush();
          if (!part) throw Error(partial + ": write failed");
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
    if (done.count(reader.line()) || trim(text).empty()) continue;
    batch.push_back({reader.line(), text});
    if (batch.size() >= size_t(opt.concurrency) * 4) run_batch();
  }
  run_batch();
  part.close();
  r.skipped = reader.skipped();
  r.requests = endpoint.requests;
  r.retried = endpoint.retried;

  // every document is done: pairs in document order, empty and duplicate ones dropped
  std::map<int64_t, nlohmann::json> by_doc;
  {
    std::ifstream p(partial);
    std::string line;
    int64_t n = 0;
    while (std::getline(p, line)) {
      const auto j = parse_json(line, partial + ":" + std::to_string(++n));
      by_doc[j.at("doc_line").get<int64_t>()] = j.at("qa");
    }
  }
  data::JsonlWriter writer(out);
  std::unordered_set<std::string> seen;
  for (const auto& [doc, qa] : by_doc)
    for (const auto& p : qa) {
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
  std::remove(partial.c_str());
  return r;
}

}  // namespace finmoe
