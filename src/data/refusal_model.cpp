// The model stage of `finmoe data refusal --model-url` (finmoe/refusal.h):
// templated questions and refusal targets rewritten in natural language
// through an OpenAI-compatible endpoint, each rewrite checked.
#include <algorithm>
#include <set>

#include "data/jsonl.h"
#include "data/resume_log.h"
#include "finmoe/error.h"
#include "finmoe/refusal.h"

namespace finmoe {

namespace {

using nlohmann::json;

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string question_prompt(const std::string& q) {
  return "下面是一道财务计算题。请用自然、多样的中文重新表述这道题。要求：保留题目中的每一个数字及"
         "其含义，不增加任何新的数字或条件，不补充题目没有给出的数据，不要解答，只输出改写后的题"
         "目。\n题目：" +
         q;
}

std::string answer_prompt(const std::string& q, const std::string& a) {
  return "下面是一道缺少条件、无法解答的财务题和一段拒答说明。请用自然的中文改写这段说明：指出缺"
         "少哪项数据、为什么因此无法计算，并请对方补充。不要编造任何数字，不要给出计算结果，只输"
         "出改写后的说明。\n题目：" +
         q + "\n说明：" + a;
}

// Every number of `orig` kept, none added: the rewrite neither loses a
// premise nor invents one (the cut premise least of all).
bool same_numbers(const std::string& orig, const std::string& rewrite) {
  const auto a = numbers_in(orig), b = numbers_in(rewrite);
  const std::set<std::string> sa(a.begin(), a.end()), sb(b.begin(), b.end());
  return sa == sb;
}

bool no_new_numbers(const std::string& orig, const std::string& rewrite) {
  const auto a = numbers_in(orig);
  const std::set<std::string> sa(a.begin(), a.end());
  for (const auto& n : numbers_in(rewrite))
    if (!sa.count(n)) return false;
  return true;
}

}  // namespace

RefusalModelResult refusal_with_model(const RefusalOptions& opt, const RefusalModelOptions& model,
                                      const std::string& out,
                                      const std::function<void(const std::string&)>& log,
                                      const std::function<void(int64_t, int64_t)>& progress) {
  check_chat_endpoint_options(model, "--model-url");
  data::refuse_existing(out, "--out");
  ChatEndpoint endpoint(model);
  data::ResumeLog part(out, "index", model.resume, log);
  RefusalModelResult r;
  r.resumed = part.resumed();
  int64_t index = 0;
  refusal_records(opt, [&](json&& rec) {
    const int64_t i = index++;
    ++r.records;
    r.unanswerable += !rec["answerable"].get<bool>();
    if (part.done(i)) return;
    json& user = rec["messages"][0]["content"];
    json& assistant = rec["messages"][1]["content"];
    const std::string q = user.get<std::string>(), a = assistant.get<std::string>();
    json rewritten = json::array();
    auto ask = [&](const std::string& prompt) {
      try {
        return trim(endpoint.chat(prompt));
      } catch (const Error& e) {
        throw Error("record " + std::to_string(i + 1) + ": " + e.what() +
                    " (the records finished so far are kept in " + part.path() +
                    "; --resume continues)");
      }
    };
    const std::string nq = ask(question_prompt(q));
    if (!nq.empty() && same_numbers(q, nq)) {
      user = nq;
      rewritten.push_back("question");
      ++r.questions;
    } else {
      ++r.rejected;
      if (log)
        log("record " + std::to_string(i + 1) +
            ": the rewritten question changes its numbers; the templated one is kept");
    }
    if (model.rewrite_answers && !rec["answerable"].get<bool>()) {
      const std::string missing = rec["cut"]["name"].get<std::string>();
      const std::string na = ask(answer_prompt(user.get<std::string>(), a));
      if (!na.empty() && na.find(missing) != std::string::npos &&
          no_new_numbers(user.get<std::string>(), na)) {
        assistant = na;
        rewritten.push_back("answer");
        ++r.answers;
      } else {
        ++r.rejected;
        if (log)
          log("record " + std::to_string(i + 1) + ": the rewritten refusal does not name " +
              missing + " or adds a number; the templated one is kept");
      }
    }
    rec["rewritten"] = rewritten;
    part.append({{"index", i}, {"record", rec}});
    if (progress) progress(index, opt.n);
  });
  data::JsonlWriter writer(out);
  for (const auto& [i, line] : part.read_all()) writer.write(line.at("record"));
  writer.commit();
  part.remove();
  r.requests = endpoint.requests;
  r.retried = endpoint.retried;
  return r;
}

}  // namespace finmoe
