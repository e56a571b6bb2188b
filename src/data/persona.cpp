// Persona augmentation of SFT instructions (finmoe/persona.h).
#include "finmoe/persona.h"

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "data/jsonl.h"
#include "data/resume_log.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

using nlohmann::json;

bool has_cjk(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0xE4 && c <= 0xE9) return true;
  return false;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// splitmix64: a choice depends only on (seed, record, variant), so a
// resumed run draws what the first would have.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

const std::vector<std::string> kScenariosZh = {"整理家庭账目", "准备贷款材料", "做年度理财规划",
                                               "和银行沟通业务", "核对公司报表"};
const std::vector<std::string> kScenariosEn = {
    "sorting out my household accounts", "preparing a loan application",
    "planning my budget for the year", "talking to my bank", "checking the company's reports"};

std::string style_description(const std::string& style, bool zh) {
  if (style == "direct") return zh ? "直接、简洁" : "direct and brief";
  if (style == "polite") return zh ? "礼貌、客气" : "polite";
  return zh ? "先说明自己遇到这个问题的场景"
            : "first saying in what situation the question came up";
}

std::string model_prompt(const std::string& instruction, const std::string& persona,
                         const std::string& style) {
  if (has_cjk(instruction))
    return "请以下面这个人的身份和口吻改写一个提问。要求：保留原问题中的全部数字、名称和条件，"
           "不增加新条件，不回答问题，只输出改写后的提问。\n身份：" +
           persona + "\n风格：" + style_description(style, true) + "\n原问题：" + instruction;
  return "Rewrite a question as the person below would ask it. Keep every number, name and "
         "condition of the original, add no new condition, do not answer it, and output only "
         "the rewritten question.\nPerson: " +
         persona + "\nStyle: " + style_description(style, false) +
         "\nOriginal question: " + instruction;
}

// The instruction's text and where it sits in the record.
struct Instruction {
  std::string text;
  json::json_pointer at;
};

std::optional<Instruction> find_instruction(const json& rec) {
  if (!rec.is_object()) return std::nullopt;
  if (rec.contains("messages") && rec["messages"].is_array()) {
    const json& m = rec["messages"];
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i].is_object() && m[i].value("role", "") == "user" && m[i].contains("content") &&
          m[i]["content"].is_string())
        return Instruction{m[i]["content"].get<std::string>(),
                           json::json_pointer("/messages/" + std::to_string(i) + "/content")};
    return std::nullopt;
  }
  if (rec.contains("instruction") && rec["instruction"].is_string())
    return Instruction{rec["instruction"].get<std::string>(), json::json_pointer("/instruction")};
  return std::nullopt;
}

}  // namespace

std::vector<std::string> persona_styles() { return {"direct", "polite", "context"}; }

std::vector<std::string> builtin_personas(bool zh) {
  if (zh)
    return {"我是一名刚参加工作的年轻人", "我是一家小微企业的老板", "我是一名退休教师",
            "我是银行的客户经理",         "我是公司的财务会计",     "我是一名在读的金融专业学生"};
  return {
      "I'm a recent graduate in my first job", "I run a small business",  "I'm a retired teacher",
      "I'm a relationship manager at a bank",  "I work as an accountant", "I'm a finance student"};
}

std::string persona_instruction(const std::string& instruction, const std::string& persona,
                                const std::string& style, int64_t scenario) {
  const bool zh = has_cjk(instruction);
  const auto& sc = zh ? kScenariosZh : kScenariosEn;
  const std::string& where = sc[size_t(scenario) % sc.size()];
  if (style == "direct") return zh ? persona + "。" + instruction : persona + ". " + instruction;
  if (style == "polite")
    return zh ? "您好，" + persona + "，想请教一个问题：" + instruction + "谢谢！"
              : "Hello! " + persona + " and have a question: " + instruction + " Thank you!";
  if (style == "context")
    return zh ? persona + "，最近在" + where + "时遇到一个问题：" + instruction
              : persona + ", and while " + where + " I ran into this question: " + instruction;
  throw Error("persona: unknown style '" + style + "' (direct, polite, context)");
}

PersonaResult persona_jsonl(const std::string& in, const std::string& out,
                            const PersonaOptions& opt,
                            const std::function<void(const std::string&)>& log,
                            const std::function<void(int64_t, int64_t)>& progress) {
  if (opt.variants < 1 || opt.variants > 20) throw Error("persona: --variants must be in [1, 20]");
  for (const auto& s : opt.styles)
    if (s != "direct" && s != "polite" && s != "context")
      throw Error("persona: --styles: unknown style '" + s + "' (direct, polite, context)");
  for (const auto& p : opt.personas)
    if (trim(p).empty()) throw Error("persona: --personas: an empty persona");
  if (opt.resume && !opt.endpoint)
    throw Error("persona: --resume continues a run with --url (templated runs are not resumable)");
  if (opt.endpoint) check_chat_endpoint_options(*opt.endpoint, "--url");
  data::refuse_existing(out, "--out");
  const std::vector<std::string> styles = opt.styles.empty() ? persona_styles() : opt.styles;

  PersonaResult r;
  std::unique_ptr<ChatEndpoint> endpoint;
  std::unique_ptr<data::ResumeLog> part;
  if (opt.endpoint) {
    endpoint = std::make_unique<ChatEndpoint>(*opt.endpoint);
    part = std::make_unique<data::ResumeLog>(out, "line", opt.resume, log);
    r.resumed = part->resumed();
  }
  data::JsonlWriter writer(out);
  data::JsonlReader reader(in, opt.skip_bad);
  reader.on_skip = log;
  json rec;
  int64_t index = 0;  // records read, the draw's position
  while (reader.next(rec)) {
    const auto ins = find_instruction(rec);
    if (!ins || trim(ins->text).empty()) {
      reader.bad_record("no instruction (a 'messages' user turn or an 'instruction' string)");
      continue;
    }
    const int64_t i = index++;
    ++r.records;
    if (part && part->done(reader.line())) continue;
    const bool zh = has_cjk(ins->text);
    const std::vector<std::string> personas =
        opt.personas.empty() ? builtin_personas(zh) : opt.personas;
    json variants = json::array();
    if (opt.keep_original) variants.push_back(rec);
    const uint64_t base = mix(opt.seed ^ mix(uint64_t(i)));
    for (int k = 0; k < opt.variants; ++k) {
      const uint64_t h = mix(base + uint64_t(k));
      const std::string& persona = personas[size_t((base + uint64_t(k)) % personas.size())];
      const std::string& style = styles[size_t(h % styles.size())];
      std::string text = persona_instruction(ins->text, persona, style, int64_t(h >> 32));
      std::string source = "template";
      if (endpoint) {
        std::string reply;
        try {
          reply = trim(endpoint->chat(model_prompt(ins->text, persona, style)));
        } catch (const Error& e) {
          throw Error(reader.where() + ": " + e.what() +
                      " (the records finished so far are kept in " + part->path() +
                      "; --resume continues)");
        }
        const auto nums = numbers_in(ins->text), got = numbers_in(reply);
        const bool keeps = std::all_of(nums.begin(), nums.end(), [&](const std::string& n) {
          return std::find(got.begin(), got.end(), n) != got.end();
        });
        if (!reply.empty() && keeps) {
          text = reply;
          source = "model";
          ++r.by_model;
        } else {
          ++r.model_rejected;
          if (log)
            log(reader.where() + ": the model's rewrite " +
                (reply.empty() ? std::string("is empty") : "drops a number") +
                "; the template's text is used");
        }
      }
      json v = rec;
      v[ins->at] = text;
      v["persona"] = persona;
      v["style"] = style;
      v["persona_source"] = source;
      v["source_line"] = reader.line();
      variants.push_back(std::move(v));
    }
    if (part) {
      part->append({{"line", reader.line()}, {"records", variants}});
    } else {
      for (const auto& v : variants) writer.write(v);
    }
    if (progress) progress(reader.bytes_read(), reader.size());
  }
  r.skipped = reader.skipped();
  if (part) {
    for (const auto& [line, done] : part->read_all())
      for (const auto& v : done.at("records")) writer.write(v);
    r.requests = endpoint->requests;
    r.retried = endpoint->retried;
  }
  writer.commit();
  if (part) part->remove();
  r.written = writer.written();
  return r;
}

}  // namespace finmoe
