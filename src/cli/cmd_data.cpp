// finmoe data amounts | dedup | compress | format ... : the papers' data tools
// (docs/data_tools.md). Each reads and writes JSONL through the data layer.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/progress.h"
#include "data/jsonl.h"
#include "finmoe/amounts.h"
#include "finmoe/data_compress.h"
#include "finmoe/data_mix.h"
#include "finmoe/dedup.h"
#include "finmoe/error.h"
#include "finmoe/format_check.h"
#include "finmoe/persona.h"
#include "finmoe/refusal.h"
#include "finmoe/selfqa.h"

namespace finmoe::cli {

namespace {

// Prints the first few skipped lines (with --skip-bad) on stderr.
std::function<void(const std::string&)> skip_printer(Progress* progress) {
  auto count = std::make_shared<int64_t>(0);
  return [count, progress](const std::string& m) {
    if (++*count <= 5)
      progress->message("skipped: " + m);
    else if (*count == 6)
      progress->message("skipped: ... (more; see the summary count)");
  };
}

int64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : int64_t(n);
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

void add_dedup(CLI::App* data, Run& run) {
  auto* d =
      data->add_subcommand("dedup", "Exact and near-duplicate removal (MinHash-LSH) on JSONL");
  d->footer(
      "Keeps the first record of each cluster, in input order, byte for byte. Near duplicates: "
      "estimated\n"
      "Jaccard of character (or word) n-gram sets >= --threshold among LSH candidates.");
  static DedupOptions o;
  static std::string in, out, removed, report;
  d->add_option("IN", in, "input JSONL")->required();
  d->add_option("--out", out, "kept records (must not exist)")->required();
  d->add_option("--removed", removed, "removed records with the line they duplicate (JSONL)");
  d->add_option("--report", report, "clusters and counts as JSON");
  d->add_option("--field", o.field,
                "text field (default: text, messages, instruction/output, prompt/response)");
  d->add_option("--threshold", o.threshold, "Jaccard threshold")->capture_default_str();
  d->add_option("--num-perm", o.num_perm, "MinHash signature length")->capture_default_str();
  d->add_option("--bands", o.bands, "LSH bands (default: chosen for the threshold)");
  d->add_option("--rows", o.rows, "rows per band (with --bands)");
  d->add_option("--ngram", o.ngram, "shingle size (default: 5 characters, 3 words)");
  d->add_flag("--word-shingles", o.word_shingles, "word n-grams instead of character n-grams");
  d->add_flag("--exact-only", o.exact_only, "only identical texts (after normalisation)");
  d->add_flag("!--no-normalize", o.normalize,
              "compare texts as they are (no lowercasing, no white-space folding)");
  d->add_option("--seed", o.seed, "seed of the MinHash hash family")->capture_default_str();
  d->add_option("--threads", o.threads, "signature threads (0: all cores)")->capture_default_str();
  d->add_flag("--skip-bad", o.skip_bad, "skip malformed lines and records without text");
  d->callback([&run] {
    run = [] {
      if (!report.empty()) data::refuse_existing(report, "--report");
      Progress progress("dedup", file_size_or_zero(in), "bytes");
      const DedupResult r = dedup_jsonl(in, out, removed, o, skip_printer(&progress),
                                        [&](int64_t done, int64_t) { progress.update(done); });
      progress.finish();
      nlohmann::json j = {{"input", in},
                          {"output", out},
                          {"records", r.records},
                          {"kept", r.kept},
                          {"removed_exact", r.removed_exact},
                          {"removed_near", r.removed_near},
                          {"skipped", r.skipped},
                          {"threshold", o.threshold},
                          {"num_perm", o.num_perm},
                          {"bands", r.bands},
                          {"rows", r.rows},
                          {"clusters", nlohmann::json::array()}};
      for (const auto& c : r.clusters) {
        nlohmann::json rm = nlohmann::json::array();
        for (size_t k = 0; k < c.removed_lines.size(); ++k)
          rm.push_back({{"line", c.removed_lines[k]},
                        {"similarity", c.similarity[k]},
                        {"exact", bool(c.exact[k])}});
        j["clusters"].push_back({{"kept_line", c.kept_line}, {"removed", rm}});
      }
      if (!report.empty()) data::write_new_json(report, j, "--report");
      std::cout << "records " << r.records << "  kept " << r.kept << "  removed " << r.removed_exact
                << " exact + " << r.removed_near << " near  (" << r.clusters.size() << " clusters"
                << (r.skipped ? ", " + std::to_string(r.skipped) + " bad lines skipped" : "")
                << ")\n"
                << "LSH " << r.bands << " bands x " << r.rows << " rows, threshold " << o.threshold
                << "\n";
      return 0;
    };
  });
}

void add_compress(CLI::App* data, Run& run) {
  auto* c = data->add_subcommand(
      "compress", "Stratified, quality-first, information-gain selection of an SFT pool");
  c->footer(
      "Strata by --strata fields; quotas proportional per first field (at least --min-per-stratum "
      "each),\n"
      "split equally among sub-strata with --balance; inside a stratum records with "
      "--quality-field >=\n"
      "--quality-threshold first, then greedy by zlib information gain (or novel n-grams, or "
      "n-gram entropy).");
  static CompressOptions o;
  static std::string in, out, report, strata, gain = "zlib";
  c->add_option("IN", in, "SFT pool (JSONL)")->required();
  c->add_option("--out", out, "selected records (must not exist)")->required();
  c->add_option("--report", report, "per-stratum counts as JSON");
  c->add_option("--strata", strata, "comma-separated tag fields, e.g. category,difficulty");
  c->add_option("--difficulty-field", o.difficulty_field,
                "numeric field binned easy (<=2), medium (<=4), hard");
  c->add_option("--quality-field", o.quality_field, "numeric quality score");
  c->add_option("--quality-threshold", o.quality_threshold, "records at or above are kept first")
      ->capture_default_str();
  c->add_option("--target", o.target, "records to keep");
  c->add_option("--ratio", o.ratio, "share of the pool to keep");
  c->add_option("--min-per-stratum", o.min_per_stratum, "at least this many per first-field group")
      ->capture_default_str();
  c->add_flag("--balance", o.balance, "split a group's quota equally among its sub-strata");
  c->add_option("--gain", gain, "zlib | ngram | entropy")->capture_default_str();
  c->add_option("--window", o.window, "bytes of the selected set zlib sees")->capture_default_str();
  c->add_option("--ngram", o.ngram, "n-gram size for --gain ngram and entropy")
      ->capture_default_str();
  c->add_flag("--exact-greedy", o.exact_greedy, "recompute every gain at every step (slow)");
  c->add_option("--field", o.field,
                "text field (default: text, messages, instruction/output, prompt/response)");
  c->add_option("--threads", o.threads, "strata selected in parallel (0: all cores)")
      ->capture_default_str();
  c->add_flag("--skip-bad", o.skip_bad, "skip malformed lines and records without text or tags");
  c->callback([&run] {
    run = [] {
      if (gain == "zlib")
        o.gain = GainKind::zlib;
      else if (gain == "ngram")
        o.gain = GainKind::ngram;
      else if (gain == "entropy")
        o.gain = GainKind::entropy;
      else
        throw Error("--gain: expected zlib, ngram or entropy, got '" + gain + "'");
      o.strata_fields = split_commas(strata);
      if (!o.difficulty_field.empty() && std::find(o.strata_fields.begin(), o.strata_fields.end(),
                                                   o.difficulty_field) == o.strata_fields.end())
        o.strata_fields.push_back(o.difficulty_field);
      if (!report.empty()) data::refuse_existing(report, "--report");
      Progress progress("compress", file_size_or_zero(in), "bytes");
      int64_t bytes = 0;
      const CompressResult r = compress_jsonl(in, out, o, skip_printer(&progress),
                                              [&](const char* stage, int64_t done, int64_t) {
                                                if (std::string(stage) != "select") bytes = done;
                                                progress.update(bytes, stage);
                                              });
      progress.finish();
      nlohmann::json j = {{"input", in},          {"output", out},
                          {"records", r.records}, {"selected", r.selected},
                          {"skipped", r.skipped}, {"strata", nlohmann::json::array()}};
      size_t w = 7;
      for (const auto& s : r.strata) w = std::max(w, s.key.size());
      std::cout << std::left << std::setw(int(w)) << "stratum" << std::right << std::setw(9)
                << "before" << std::setw(9) << "after" << std::setw(9) << "hq_bef" << std::setw(9)
                << "hq_aft"
                << "\n";
      for (const auto& s : r.strata) {
        j["strata"].push_back({{"stratum", s.key},
                               {"before", s.before},
                               {"after", s.after},
                               {"quota", s.quota},
                               {"high_quality_before", s.high_quality_before},
                               {"high_quality_after", s.high_quality_after}});
        std::cout << std::left << std::setw(int(w)) << s.key << std::right << std::setw(9)
                  << s.before << std::setw(9) << s.after << std::setw(9) << s.high_quality_before
                  << std::setw(9) << s.high_quality_after << "\n";
      }
      int64_t pool = 0;
      for (const auto& s : r.strata) pool += s.before;
      std::cout << std::left << std::setw(int(w)) << "total" << std::right << std::setw(9) << pool
                << std::setw(9) << r.selected << "\n";
      if (r.skipped) std::cout << r.skipped << " bad lines skipped\n";
      if (!report.empty()) data::write_new_json(report, j, "--report");
      return 0;
    };
  });
}

void add_format(CLI::App* data, Run& run) {
  auto* f = data->add_subcommand(
      "format", "Output-format instruction data (JSON keys, Markdown table, bullets, length)");
  f->require_subcommand(1);

  auto* m = f->add_subcommand(
      "make", "Add a format constraint to SFT records and rewrite their answers to meet it");
  static FormatMakeOptions mo;
  static std::string min, mout, weights;
  m->add_option("IN", min, "SFT JSONL (messages, or instruction/input/output)")->required();
  m->add_option("--out", mout, "output JSONL (must not exist)")->required();
  m->add_option("--weights", weights,
                "type=weight,... (default json_keys=1,markdown_table=1,bullets=1,length=1)");
  m->add_option("--seed", mo.seed, "random seed")->capture_default_str();
  m->add_flag("--skip-bad", mo.skip_bad,
              "skip malformed lines and records without a user/assistant pair");
  m->callback([&run] {
    run = [] {
      if (!weights.empty()) {
        mo.weights.clear();
        for (const auto& kv : split_commas(weights)) {
          const size_t eq = kv.find('=');
          if (eq == std::string::npos)
            throw Error("--weights: expected type=weight, got '" + kv + "'");
          char* end = nullptr;
          const std::string num = kv.substr(eq + 1);
          const double w = std::strtod(num.c_str(), &end);
          if (num.empty() || *end != '\0' || !(w >= 0) || !std::isfinite(w))
            throw Error("--weights: '" + kv + "': the weight must be a non-negative number");
          mo.weights[kv.substr(0, eq)] = w;
        }
      }
      Progress progress("format make", file_size_or_zero(min), "bytes");
      const auto r = make_format_jsonl(min, mout, mo, skip_printer(&progress),
                                       [&](int64_t b) { progress.update(b); });
      progress.finish();
      for (const auto& [t, n] : r.per_type) std::cout << t << "\t" << n << "\n";
      std::cout << "wrote " << r.written << " of " << r.records << " records to " << mout;
      if (r.unusable) std::cout << " (" << r.unusable << " answers fit no type)";
      if (r.skipped) std::cout << " (" << r.skipped << " bad lines skipped)";
      std::cout << "\n";
      return 0;
    };
  });

  auto* c = f->add_subcommand(
      "check", "Check responses against their format constraints: filter, or score as a metric");
  static FormatCheckOptions co;
  static std::string cin, cout_path, failed, report;
  c->add_option("IN", cin, "JSONL with a response and a \"format\" constraint per record")
      ->required();
  c->add_option("--out", cout_path, "records that pass, unchanged (must not exist)");
  c->add_option("--failed", failed, "records that fail, with \"format_error\" (must not exist)");
  c->add_option("--report", report, "pass rates as JSON");
  c->add_option("--constraint", co.constraint,
                "one constraint (JSON) for every record instead of its \"format\"");
  c->add_option("--response-field", co.response_field,
                "field with the response (default: last assistant message, "
                "response, output, completion)");
  c->add_flag("--skip-bad", co.skip_bad,
              "skip malformed lines and records without a response or constraint");
  c->callback([&run] {
    run = [] {
      if (!report.empty()) data::refuse_existing(report, "--report");
      Progress progress("format check", file_size_or_zero(cin), "bytes");
      const auto r = check_format_jsonl(cin, cout_path, failed, co, skip_printer(&progress),
                                        [&](int64_t b) { progress.update(b); });
      progress.finish();
      nlohmann::json j = {{"input", cin},
                          {"checked", r.checked},
                          {"passed", r.passed},
                          {"skipped", r.skipped},
                          {"pass_rate", r.checked ? double(r.passed) / double(r.checked) : 0.0}};
      std::cout << std::left << std::setw(16) << "type" << std::right << std::setw(9) << "checked"
                << std::setw(9) << "passed" << std::setw(9) << "rate"
                << "\n";
      for (const auto& [t, np] : r.per_type) {
        const double rate = np.first ? double(np.second) / double(np.first) : 0.0;
        j["types"][t] = {{"checked", np.first}, {"passed", np.second}, {"pass_rate", rate}};
        std::cout << std::left << std::setw(16) << t << std::right << std::setw(9) << np.first
                  << std::setw(9) << np.second << std::setw(9) << std::fixed << std::setprecision(3)
                  << rate << "\n";
      }
      std::cout << std::left << std::setw(16) << "all" << std::right << std::setw(9) << r.checked
                << std::setw(9) << r.passed << std::setw(9) << std::fixed << std::setprecision(3)
                << (r.checked ? double(r.passed) / double(r.checked) : 0.0) << "\n";
      if (!report.empty()) data::write_new_json(report, j, "--report");
      return 0;
    };
  });
}

void add_mix(CLI::App* data, Run& run) {
  auto* m = data->add_subcommand(
      "mix", "Hybrid-tuning stream: pretraining text + instruction data, shuffled (FinMoE §4.2)");
  m->footer(
      "Default: the union of all records shuffled together. With --text-share: that share of text "
      "records,\n"
      "sampled without repeats (--total records, or as many as the pools allow).");
  static MixOptions o;
  static std::string out, text, sft;
  m->add_option("--text", text, "comma-separated pretraining JSONL ({\"text\"})");
  m->add_option("--sft", sft, "comma-separated instruction JSONL ({\"messages\"})");
  m->add_option("--out", out, "output JSONL (must not exist)")->required();
  m->add_option("--text-share", o.text_share,
                "share of text records in [0, 1] (default: the union)");
  m->add_option("--total", o.total,
                "records out with --text-share (default: the most without repeats)");
  m->add_option("--seed", o.seed, "shuffle seed")->capture_default_str();
  m->add_flag("--skip-bad", o.skip_bad, "skip malformed lines and records of the wrong kind");
  m->callback([&run] {
    run = [] {
      o.text_files = split_commas(text);
      o.sft_files = split_commas(sft);
      Progress progress("mix", 0, "records");
      const MixResult r = mix_jsonl(out, o, skip_printer(&progress),
                                    [&](int64_t done, int64_t) { progress.update(done); });
      progress.finish();
      std::cout << "text " << r.text_out << " of " << r.text_in << ", instructions " << r.sft_out
                << " of " << r.sft_in << " -> " << out << " (" << r.text_out + r.sft_out
                << " records";
      if (r.skipped) std::cout << ", " << r.skipped << " bad lines skipped";
      std::cout << ")\n";
      return 0;
    };
  });
}

// The endpoint options of the tools that call a model (persona, refusal).
void add_endpoint_options(CLI::App* cmd, ChatEndpointOptions& e) {
  cmd->add_option("--model", e.model, "model name sent in requests")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--api-key", e.api_key, "bearer token (default: $OPENAI_API_KEY)")
      ->envname("OPENAI_API_KEY")
      ->group("Model rewrite");
  cmd->add_option("--max-tokens", e.max_tokens, "max_tokens per request")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--temperature", e.temperature, "sampling temperature")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--retries", e.retries, "retries on connection errors, timeouts, 429 and 5xx")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--backoff", e.backoff_s, "first retry wait in seconds (doubled per retry)")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--timeout", e.timeout_s, "seconds per request")
      ->capture_default_str()
      ->group("Model rewrite");
  cmd->add_option("--rps", e.requests_per_s, "at most this many requests per second (0: none)")
      ->capture_default_str()
      ->group("Model rewrite");
}

void add_refusal(CLI::App* data, Run& run) {
  auto* r = data->add_subcommand(
      "refusal", "Unanswerable financial questions (a needed premise cut) with refusal targets");
  r->footer(
      "TreeCut-style: each question is a tree of quantities (eps, pe, roe, deposit, cash); an "
      "unanswerable\n"
      "one lacks a premise at --cut-depth, its answer says which and why; answerable twins get "
      "worked answers.");
  static RefusalOptions o;
  static std::string out;
  r->add_option("--out", out, "output JSONL (must not exist)")->required();
  r->add_option("-n,--count", o.n, "records")->capture_default_str();
  r->add_option("--seed", o.seed, "random seed")->capture_default_str();
  r->add_option("--unanswerable-share", o.unanswerable_share, "share of unanswerable records")
      ->capture_default_str();
  r->add_option("--cut-depth", o.cut_depth,
                "depth of the removed premise (1: used by the asked quantity; 0: any)")
      ->capture_default_str();
  static RefusalModelOptions m;
  static bool keep_answers = false;
  auto* url = r->add_option("--model-url", m.url,
                            "rewrite questions and refusals through this OpenAI-compatible "
                            "endpoint, e.g. http://127.0.0.1:8000 (finmoe serve)")
                  ->group("Model rewrite");
  add_endpoint_options(r, m);
  r->add_flag("--resume", m.resume, "continue an interrupted --model-url run from OUT.partial")
      ->group("Model rewrite");
  r->add_flag("--keep-answers", keep_answers,
              "rewrite the questions only; refusal targets stay templated")
      ->group("Model rewrite");
  r->callback([&run, url] {
    run = [url] {
      if (!url->empty()) {
        m.rewrite_answers = !keep_answers;
        Progress progress("refusal", o.n, "records");
        const RefusalModelResult res = refusal_with_model(
            o, m, out, [&](const std::string& msg) { progress.message(msg); },
            [&](int64_t done, int64_t) { progress.update(done); });
        progress.finish();
        std::cout << "wrote " << res.records << " records (" << res.unanswerable
                  << " unanswerable) to " << out << "\nthe model rewrote " << res.questions
                  << " questions and " << res.answers << " refusals; " << res.rejected
                  << " rewrites failed their check and kept the template (" << res.resumed
                  << " records from an earlier run, " << res.requests << " requests, "
                  << res.retried << " retries)\n";
        return 0;
      }
      if (m.resume) throw Error("--resume continues a --model-url run");
      data::JsonlWriter w(out);
      Progress progress("refusal", o.n, "records");
      int64_t unanswerable = 0;
      refusal_records(o, [&](nlohmann::json&& rec) {
        unanswerable += !rec["answerable"].get<bool>();
        w.write(rec);
        progress.update(w.written());
      });
      w.commit();
      progress.finish();
      std::cout << "wrote " << w.written() << " records (" << unanswerable << " unanswerable) to "
                << out << "\n";
      return 0;
    };
  });
}

void add_persona(CLI::App* data, Run& run) {
  auto* p = data->add_subcommand(
      "persona", "SFT instructions asked again by personas in several styles (answers kept)");
  p->footer(
      "Each record's first user turn (or 'instruction') is rewritten --variants times, each by "
      "another persona\n"
      "(a self-introduction) in a style (direct, polite, context): templated and deterministic in "
      "--seed, or\n"
      "written by a model with --url (a reply that drops a number falls back to the template, "
      "counted).");
  static PersonaOptions o;
  static ChatEndpointOptions e;
  static std::string in, out, personas_file, styles;
  p->add_option("IN", in, "SFT records (JSONL {\"messages\"} or {\"instruction\"})")->required();
  p->add_option("--out", out, "output JSONL (must not exist)")->required();
  p->add_option("--variants", o.variants, "rewrites per record")->capture_default_str();
  p->add_option("--seed", o.seed, "random seed")->capture_default_str();
  p->add_option("--personas", personas_file,
                "a text file with one persona per line (default: built-in, by language)");
  p->add_option("--styles", styles, "comma-separated subset of direct,polite,context");
  p->add_flag("--keep-original", o.keep_original, "also write each record unchanged first");
  p->add_flag("--skip-bad", o.skip_bad, "skip malformed lines and records without an instruction");
  auto* url = p->add_option("--url", e.url, "rewrite through this OpenAI-compatible endpoint")
                  ->group("Model rewrite");
  add_endpoint_options(p, e);
  p->add_flag("--resume", o.resume, "continue an interrupted --url run from OUT.partial")
      ->group("Model rewrite");
  p->callback([&run, url] {
    run = [url] {
      if (!url->empty()) o.endpoint = e;
      o.styles = split_commas(styles);
      if (!personas_file.empty()) {
        std::ifstream f(personas_file);
        if (!f) throw Error("--personas " + personas_file + ": cannot be read");
        for (std::string line; std::getline(f, line);)
          if (line.find_first_not_of(" \t\r") != std::string::npos) {
            while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
            o.personas.push_back(line);
          }
        if (o.personas.empty()) throw Error("--personas " + personas_file + ": no persona");
      }
      Progress progress("persona", file_size_or_zero(in), "bytes");
      const PersonaResult r = persona_jsonl(
          in, out, o, [&](const std::string& m) { progress.message(m); },
          [&](int64_t done, int64_t) { progress.update(done); });
      progress.finish();
      std::cout << "records " << r.records << " -> " << r.written << " written to " << out << "\n";
      if (o.endpoint)
        std::cout << "model rewrites " << r.by_model << ", template fallbacks " << r.model_rejected
                  << " (" << r.resumed << " records from an earlier run, " << r.requests
                  << " requests, " << r.retried << " retries)\n";
      if (r.skipped) std::cout << r.skipped << " bad lines skipped\n";
      return 0;
    };
  });
}

void add_selfqa(CLI::App* data, Run& run) {
  auto* q = data->add_subcommand(
      "selfqa", "Self-QA: question-answer pairs from documents via an OpenAI-compatible endpoint");
  q->footer(
      "For each document (pieces of --max-doc-chars) the model writes --questions questions, then "
      "answers each from\n"
      "the document. Finished documents go to OUT.partial as they complete; after an error, "
      "--resume continues.");
  static SelfQaOptions o;
  static std::string in, out;
  q->add_option("IN", in, "documents (JSONL with a string field, default 'text')")->required();
  q->add_option("--out", out, "SFT pairs (JSONL {\"messages\"}; must not exist)")->required();
  q->add_option("--url", o.url, "endpoint base URL, e.g. http://127.0.0.1:8000 (finmoe serve)")
      ->required();
  q->add_option("--model", o.model, "model name sent in requests")->capture_default_str();
  q->add_option("--api-key", o.api_key, "bearer token (default: $OPENAI_API_KEY)")
      ->envname("OPENAI_API_KEY");
  q->add_option("--questions", o.questions_per_doc, "questions per document piece")
      ->capture_default_str();
  q->add_option("--max-doc-chars", o.max_doc_chars, "longest piece of a document (code points)")
      ->capture_default_str();
  q->add_option("--max-tokens", o.max_tokens, "max_tokens per request")->capture_default_str();
  q->add_option("--temperature", o.temperature, "sampling temperature")->capture_default_str();
  q->add_option("--retries", o.retries, "retries on connection errors, timeouts, 429 and 5xx")
      ->capture_default_str();
  q->add_option("--backoff", o.backoff_s, "first retry wait in seconds (doubled per retry)")
      ->capture_default_str();
  q->add_option("--timeout", o.timeout_s, "seconds per request")->capture_default_str();
  q->add_option("--rps", o.requests_per_s, "at most this many requests per second (0: no limit)")
      ->capture_default_str();
  q->add_option("--concurrency", o.concurrency, "documents in flight")->capture_default_str();
  q->add_option("--field", o.field, "document text field (default: text)");
  q->add_flag("--resume", o.resume, "continue an interrupted run from OUT.partial");
  q->add_flag("--skip-bad", o.skip_bad, "skip malformed lines and records without text");
  q->callback([&run] {
    run = [] {
      Progress progress("selfqa", file_size_or_zero(in), "bytes");
      const SelfQaResult r = selfqa_jsonl(
          in, out, o, [&](const std::string& m) { progress.message(m); },
          [&](int64_t done, int64_t) { progress.update(done); });
      progress.finish();
      std::cout << "documents " << r.documents << " (" << r.resumed
                << " from an earlier run), requests " << r.requests << " (" << r.retried
                << " retries)\npairs " << r.pairs << " (dropped " << r.duplicates << " duplicates, "
                << r.empty << " empty) -> " << out << "\n";
      if (r.skipped) std::cout << r.skipped << " bad lines skipped\n";
      return 0;
    };
  });
}

void add_amounts(CLI::App* data, Run& run) {
  auto* a = data->add_subcommand(
      "amounts", "Chinese uppercase financial amounts (中文大写金额) <-> numbers; SFT pairs");
  a->require_subcommand(1);

  auto* up = a->add_subcommand("upper", "Numbers (1409.50, 1,409.5, ¥1409) -> canonical uppercase");
  static std::vector<std::string> numbers;
  up->add_option("AMOUNT", numbers, "amounts in 元 with at most two decimals")->required();
  up->callback([&run] {
    run = [] {
      for (const auto& n : numbers) std::cout << amount_to_upper(parse_decimal_amount(n)) << "\n";
      return 0;
    };
  });

  auto* num =
      a->add_subcommand("number", "Uppercase amounts (canonical or a common variant) -> 1409.50");
  static std::vector<std::string> uppers;
  static bool canonical = false;
  num->add_option("TEXT", uppers, "uppercase amounts, e.g. 人民币壹仟肆佰零玖元伍角")->required();
  num->add_flag("--canonical", canonical, "also print the canonical uppercase form after a tab");
  num->callback([&run] {
    run = [] {
      for (const auto& u : uppers) {
        const int64_t c = parse_upper_amount(u);
        std::cout << cents_to_decimal(c);
        if (canonical) std::cout << "\t" << amount_to_upper(c);
        std::cout << "\n";
      }
      return 0;
    };
  });

  auto* pairs = a->add_subcommand(
      "pairs", "SFT pairs over the edge-case families (number -> uppercase and back)");
  pairs->footer(
      "Writes OUT (JSONL {\"messages\": [user, assistant], \"task\", \"family\", \"amount\"}); the "
      "families\n"
      "(section_zeros, boundary, jiao_fen_only, jiao_zero, yuan_zero, whole, general) in equal "
      "numbers.");
  static AmountPairOptions po;
  static std::string out;
  static bool no_variants = false;
  pairs->add_option("--out", out, "output JSONL (must not exist)")->required();
  pairs->add_option("-n,--count", po.n, "number of pairs")->capture_default_str();
  pairs->add_option("--seed", po.seed, "random seed")->capture_default_str();
  pairs->add_option("--to-upper-share", po.to_upper_share, "share of number -> uppercase pairs")
      ->capture_default_str();
  pairs->add_flag("--no-variants", no_variants, "uppercase prompts only in the canonical form");
  pairs->callback([&run] {
    run = [] {
      po.variants = !no_variants;
      data::JsonlWriter w(out);
      Progress progress("amounts pairs", po.n, "pairs");
      std::map<std::string, int64_t> families;
      amount_pairs(po, [&](nlohmann::json&& r) {
        ++families[r["family"].get<std::string>()];
        w.write(r);
        progress.update(w.written());
      });
      w.commit();
      progress.finish();
      for (const auto& [f, n] : families) std::cout << f << "\t" << n << "\n";
      std::cout << "wrote " << w.written() << " pairs to " << out << "\n";
      return 0;
    };
  });
}

}  // namespace

void add_data(CLI::App& app, Run& run) {
  auto* data = app.add_subcommand(
      "data",
      "The papers' data tools: amounts, dedup, compress, format, mix, refusal, persona, "
      "selfqa");
  data->require_subcommand(1);
  add_amounts(data, run);
  add_dedup(data, run);
  add_compress(data, run);
  add_format(data, run);
  add_mix(data, run);
  add_refusal(data, run);
  add_persona(data, run);
  add_selfqa(data, run);
}

}  // namespace finmoe::cli
