// The Jinja interpreter against Python jinja2 as HF transformers renders chat
// templates: real templates x conversations, and feature snippets, whose
// expected strings tests/ref/make_chat_template_reference.py wrote.
#include "finmoe/chat_template.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "finmoe/error.h"
#include "tokenizer/jinja.h"

namespace finmoe {
namespace {

using ojson = nlohmann::ordered_json;
using ::testing::HasSubstr;

std::string data_path(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/chat_templates/" + rel; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<ojson> read_jsonl(const std::string& path) {
  std::vector<ojson> out;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(ojson::parse(line));
  return out;
}

// 2024-07-26 12:00:00 UTC, the time the reference script gives strftime_now().
constexpr std::time_t kFixedNow = 1721995200;

TEST(ChatTemplateReference, RealTemplatesRenderByteIdenticalToJinja2) {
  const ojson index = ojson::parse(read_file(data_path("index.json")));
  const ojson conv = ojson::parse(read_file(data_path("conversations.json")));
  ASSERT_EQ(conv["fixed_now"], "2024-07-26T12:00:00");
  const ojson& cases = conv["cases"];
  int pairs = 0, matched = 0, refused = 0;
  for (const auto& t : index["templates"]) {
    const std::string name = t["name"];
    ChatTemplate tpl(read_file(data_path("templates/" + name + ".jinja")), t["bos_token"], t["eos_token"]);
    tpl.set_fixed_time(kFixedNow);
    for (const auto& e : read_jsonl(data_path("expected/" + name + ".jsonl"))) {
      const ojson& c = cases[e["case"].get<size_t>()];
      ChatRequest r;
      r.messages = conv["conversations"][c["conversation"].get<std::string>()];
      if (c["tools"].get<bool>()) r.tools = conv["tools"];
      r.add_generation_prompt = c["add_generation_prompt"];
      r.kwargs = c["kwargs"];
      const std::string what = name + " / " + c.dump();
      ++pairs;
      if (e.contains("output")) {
        try {
          std::string got = tpl.render(r);
          if (got == e["output"].get<std::string>()) ++matched;
          else ADD_FAILURE() << what << "\n got: " << ojson(got).dump() << "\nwant: " << e["output"].dump();
        } catch (const Error& err) {
          ADD_FAILURE() << what << ": unexpected error " << err.what();
        }
      } else {
        ++refused;
        try {
          std::string got = tpl.render(r);
          ADD_FAILURE() << what << ": rendered " << ojson(got).dump() << " but jinja2 raised " << e["error"];
        } catch (const Error& err) {
          ++matched;
          if (e["raised"].get<bool>()) {
            EXPECT_THAT(err.what(), HasSubstr(e["error"].get<std::string>())) << what;
          }
        }
      }
    }
  }
  std::cout << "[ chat templates ] " << index["templates"].size() << " templates, " << pairs
            << " template x conversation pairs, " << matched << " match jinja2 (" << refused
            << " refused by both)\n";
  EXPECT_EQ(matched, pairs);
  EXPECT_GE(pairs, 600);
}

TEST(ChatTemplateReference, FeatureSnippetsMatchJinja2) {
  int n = 0;
  for (const auto& s : read_jsonl(data_path("snippets.jsonl"))) {
    const std::string src = s["template"];
    ++n;
    try {
      jinja::Template t(src);
      std::string got = t.render(s["context"], kFixedNow);
      if (s.contains("error")) ADD_FAILURE() << src << ": rendered " << ojson(got).dump() << ", jinja2 raised " << s["error"];
      else EXPECT_EQ(got, s["output"].get<std::string>()) << src;
    } catch (const Error& e) {
      if (!s.contains("error")) ADD_FAILURE() << src << ": unexpected error " << e.what();
    }
  }
  EXPECT_GE(n, 50);
}

// Real templates cut and spliced at random: each either renders or throws
// finmoe::Error; nothing else escapes (no other exception, no crash).
TEST(Jinja, MutatedTemplatesRenderOrFailWithError) {
  const ojson index = ojson::parse(read_file(data_path("index.json")));
  const ojson conv = ojson::parse(read_file(data_path("conversations.json")));
  const std::vector<std::string> pieces = {"{%", "%}", "{{", "}}", "{#", "#}", "-", "(", ")", "[", "]", "'", "\"",
                                           "|", ".", ",", " if ", " for ", " in ", "endif", "endfor", "loop",
                                           "~", "*", "**", "[::-1]", "|tojson", " is defined", "ns.", "\n"};
  std::mt19937 rng(1234);
  int rendered = 0, failed = 0;
  for (const auto& t : index["templates"]) {
    const std::string src = read_file(data_path("templates/" + t["name"].get<std::string>() + ".jinja"));
    for (int k = 0; k < 40; ++k) {
      std::string m = src;
      for (int edits = 1 + int(rng() % 3); edits > 0 && !m.empty(); --edits) {
        size_t at = rng() % m.size();
        switch (rng() % 3) {
          case 0: m.erase(at, 1 + rng() % 12); break;
          case 1: m.insert(at, pieces[rng() % pieces.size()]); break;
          default: m.insert(at, m.substr(rng() % m.size(), 1 + rng() % 40)); break;
        }
      }
      ChatRequest r;
      r.messages = conv["conversations"]["tool_call_result"];
      r.tools = conv["tools"];
      r.add_generation_prompt = true;
      try {
        jinja::Options o;
        o.limits.max_output_bytes = 1 << 20;
        o.limits.max_iterations = 100000;
        jinja::Template tpl(m, o);
        ojson ctx = {{"messages", r.messages}, {"tools", r.tools}, {"add_generation_prompt", true},
                     {"bos_token", "<s>"}, {"eos_token", "</s>"}};
        tpl.render(ctx);
        ++rendered;
      } catch (const Error&) {
        ++failed;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "non-finmoe exception " << e.what() << " for template:\n" << m;
      }
    }
  }
  EXPECT_GT(rendered, 0);
  EXPECT_GT(failed, 0);
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  try {
    jinja::Template t("ok\n{% if x %}\n  {{ a + }}\n{% endif %}");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("line 3"));
  }
  EXPECT_THROW(jinja::Template("{% for x in y %}no end"), Error);
  EXPECT_THROW(jinja::Template("{{ 'unterminated }}"), Error);
  EXPECT_THROW(jinja::Template("{% frobnicate %}"), Error);
}

TEST(Jinja, HostileTemplatesFailCleanly) {
  // deep nesting in the parser
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_THROW(jinja::Template{deep}, Error);
  // unbounded macro recursion
  jinja::Template rec("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_THROW(rec.render(ojson::object()), Error);
  // output blow-up
  jinja::Options o;
  o.limits.max_output_bytes = 1 << 20;
  jinja::Template big("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", o);
  EXPECT_THROW(big.render(ojson::object()), Error);
  jinja::Template rep("{{ 'ab' * 100000000000 }}", o);
  EXPECT_THROW(rep.render(ojson::object()), Error);
  // iteration bound
  o.limits.max_iterations = 1000;
  jinja::Template loops("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", o);
  EXPECT_THROW(loops.render(ojson::object()), Error);
}

// chat_template.jinja beside tokenizer_config.json wins (as in transformers):
// a Qwen3 tokenizer whose config holds another template renders as jinja2
// rendered the Qwen3 template.
TEST(ChatTemplate, ChatTemplateJinjaFileWins) {
  namespace fs = std::filesystem;
  const fs::path src = fs::path(FINMOE_TEST_DATA_DIR) / "tokenizer" / "qwen3";
  const fs::path dir = fs::temp_directory_path() / ("finmoe_chat_jinja_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(src / "tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  ojson cfg = ojson::parse(read_file((src / "tokenizer_config.json").string()));
  const std::string qwen3_template = cfg["chat_template"];
  cfg["chat_template"] = "{{ raise_exception('the config template must not be used') }}";
  std::ofstream(dir / "tokenizer_config.json") << cfg.dump();
  std::ofstream(dir / "chat_template.jinja", std::ios::binary) << qwen3_template;
  const Tokenizer tok = Tokenizer::from_dir(dir.string());
  EXPECT_EQ(tok.config().chat_template, qwen3_template);
  // case "multi_turn", add_generation_prompt true, as jinja2 rendered it
  const ojson conv = ojson::parse(read_file(data_path("conversations.json")));
  std::string want;
  for (const auto& e : read_jsonl(data_path("expected/tokenizer-qwen3.jsonl"))) {
    const ojson& c = conv["cases"][e["case"].get<size_t>()];
    if (c["conversation"] == "multi_turn" && c["add_generation_prompt"].get<bool>() && c["kwargs"].empty())
      want = e["output"];
  }
  std::vector<ChatMessage> msgs;
  for (const auto& m : conv["conversations"]["multi_turn"]) msgs.push_back({m["role"], m["content"]});
  EXPECT_EQ(render_chat(tok, msgs, true), want);
  fs::remove_all(dir);
}

TEST(ChatTemplate, RenderChatUsesTheTokenizersOwnTemplate) {
  // A template none of the native families match is rendered, not refused.
  ChatTemplate t("{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[ASSISTANT]{% endif %}{{ eos_token }}",
                 "<s>", "</s>");
  ChatRequest r;
  r.messages = chat_messages_json({{"system", "Be brief."}, {"user", "Hi"}});
  r.add_generation_prompt = true;
  EXPECT_EQ(t.render(r), "[SYSTEM] Be brief.\n[USER] Hi\n[ASSISTANT]</s>");
  ChatTemplate refuse("{{ raise_exception('only user turns') }}", "", "");
  try {
    refuse.render(r);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("only user turns"));
  }
}

}  // namespace
}  // namespace finmoe
