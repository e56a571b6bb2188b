// finmoe data amounts | dedup | compress | format ... : the papers' data tools
// (docs/data_tools.md). Each reads and writes JSONL through the data layer.
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/progress.h"
#include "data/jsonl.h"
#include "finmoe/amounts.h"
#include "finmoe/error.h"

namespace finmoe::cli {

namespace {

void add_amounts(CLI::App* data, Run& run) {
  auto* a = data->add_subcommand("amounts", "Chinese uppercase financial amounts (中文大写金额) <-> numbers; SFT pairs");
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

  auto* num = a->add_subcommand("number", "Uppercase amounts (canonical or a common variant) -> 1409.50");
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

  auto* pairs = a->add_subcommand("pairs", "SFT pairs over the edge-case families (number -> uppercase and back)");
  pairs->footer(
      "Writes OUT (JSONL {\"messages\": [user, assistant], \"task\", \"family\", \"amount\"}); the families\n"
      "(section_zeros, boundary, jiao_fen_only, jiao_zero, yuan_zero, whole, general) in equal numbers.");
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
      const auto records = amount_pairs(po);
      Progress progress("amounts pairs", int64_t(records.size()), "pairs");
      std::map<std::string, int64_t> families;
      for (const auto& r : records) {
        w.write(r);
        ++families[r["family"].get<std::string>()];
        progress.update(w.written());
      }
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
  auto* data = app.add_subcommand("data", "The papers' data tools: amounts, dedup, compress, format, ...");
  data->require_subcommand(1);
  add_amounts(data, run);
}

}  // namespace finmoe::cli
