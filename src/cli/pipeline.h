#pragma once
// What the pipelines built from `finmoe` subcommands share (`finmoe demo`,
// `finmoe experiment`): running this binary as a child process, reading and
// writing their JSON and text outputs, and plotting training curves.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe::cli {

// The running finmoe binary (/proc/self/exe).
std::string self_exe();

// Runs `finmoe ARGS...` and waits. stdout goes to `stdout_file` when given;
// stdout and stderr go to `log_file` (appended) when given, else to ours.
// Returns the exit status (128 + N for a child killed by signal N).
int run_finmoe(const std::vector<std::string>& args, const std::string& stdout_file = "",
               const std::string& log_file = "");

// The command line as a user would type it (arguments quoted when needed).
std::string command_line(const std::vector<std::string>& args);

nlohmann::json read_json(const std::string& path);         // throws Error naming the path
std::string read_text_file(const std::string& path);       // throws Error naming the path
void write_text(const std::string& path, const std::string& text);  // atomic

// ---- cached steps (`finmoe experiment`'s stages, `finmoe demo`'s steps) ----
// A step writes one directory; once it finished, the directory holds
// kStepMarker, a JSON object whose "key" hashes the step's inputs (its
// commands, configs and the keys of the steps it reads), so a step whose
// inputs changed reruns instead of being reused.
inline constexpr const char* kStepMarker = ".finmoe-stage.json";
enum class StepState {
  Fresh,       // no directory
  Cached,      // finished with this key
  Stale,       // finished with another key (other inputs)
  Unfinished,  // a directory without a marker: a killed run
};
StepState step_state(const std::string& dir, const std::string& key);
// Writes kStepMarker into dir (atomically): `marker` plus "key" and "finished".
void mark_step_finished(const std::string& dir, const std::string& key, nlohmann::json marker = {});
// 16 hex digits hashing `text` (FNV-1a, 64 bits).
std::string hash_key(std::string_view text);

// The newest checkpoint of a `finmoe train` output directory.
std::string latest_checkpoint(const std::string& run_dir);

// Bytes of the .safetensors files under `dir`.
int64_t dir_bytes(const std::string& dir);

struct Curve {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (tokens, value)
};

// `field` (e.g. "loss", "eval_loss") against tokens from a run's metrics.jsonl.
Curve read_curve(const std::string& run_dir, const std::string& name, const std::string& color,
                 const std::string& field);

// Curves against tokens seen, as an SVG document.
std::string plot_curves(const std::vector<Curve>& curves, const std::string& title,
                        const std::string& y_label = "loss");

// A distinct colour for series i.
std::string series_color(size_t i);

}  // namespace finmoe::cli
