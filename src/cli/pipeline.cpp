#include "cli/pipeline.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "convert/svg.h"
#include "core/file_util.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

StepState step_state(const std::string& dir, const std::string& key) {
  const std::string marker = dir + "/" + kStepMarker;
  if (fs::exists(marker)) {
    json m;
    try {
      m = json::parse(read_text_file(marker));
    } catch (const std::exception&) {  // a torn or foreign file: not finished
    }
    return m.is_object() && m.value("key", "") == key && m.value("finished", false) ? StepState::Cached
                                                                                  : StepState::Stale;
  }
  return fs::exists(dir) ? StepState::Unfinished : StepState::Fresh;
}

void mark_step_finished(const std::string& dir, const std::string& key, json marker) {
  if (!marker.is_object()) marker = json::object();
  marker["key"] = key;
  marker["finished"] = true;
  write_text(dir + "/" + kStepMarker, marker.dump(2) + "\n");
}

std::string hash_key(std::string_view text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string self_exe() { return fs::read_symlink("/proc/self/exe").string(); }

int run_finmoe(const std::vector<std::string>& args, const std::string& stdout_file,
               const std::string& log_file) {
  static const std::string exe = self_exe();
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) throw_errno("fork for `finmoe " + (args.empty() ? "" : args.front()) + "`", exe);
  if (pid == 0) {
    if (!log_file.empty()) {
      const int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0) _exit(127);
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    if (!stdout_file.empty()) {
      const int fd = ::open(stdout_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) _exit(127);
      dup2(fd, 1);
      close(fd);
    }
    std::vector<std::string> copy = args;
    std::vector<char*> argv{const_cast<char*>(exe.c_str())};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("waitpid", exe);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
}

std::string command_line(const std::vector<std::string>& args) {
  std::string s = "finmoe";
  for (const auto& a : args) {
    const bool plain = !a.empty() && std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-_./=,:+@%").find(c) != std::string_view::npos;
    });
    if (plain) {
      s += " " + a;
    } else {
      std::string q = "'";
      for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      s += " " + q + "'";
    }
  }
  return s;
}

json read_json(const std::string& path) { return read_json_file(path); }

void write_text(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text);
  f.commit();
}

std::string latest_checkpoint(const std::string& run_dir) {
  std::ifstream f(run_dir + "/latest");
  std::string name;
  if (!(f >> name)) throw Error(run_dir + "/latest missing: the training run did not finish");
  return run_dir + "/" + name;
}

int64_t dir_bytes(const std::string& dir) {
  int64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") n += int64_t(e.file_size());
  return n;
}

Curve read_curve(const std::string& run_dir, const std::string& name, const std::string& color,
                 const std::string& field) {
  Curve c{name, color, {}};
  const std::string path = run_dir + "/metrics.jsonl";
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    auto j = parse_json(line, path);
    if (j.contains(field) && j[field].is_number())
      c.points.emplace_back(j["tokens"].get<double>(), j[field].get<double>());
  }
  return c;
}

std::string plot_curves(const std::vector<Curve>& curves, const std::string& title,
                        const std::string& y_label) {
  const double W = 640, H = 400, L = 60, R = 150, T = 36, B = 46;
  double x1 = 1, y0 = 1e30, y1 = -1e30;
  for (const auto& c : curves)
    for (auto [x, y] : c.points) {
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (y0 > y1) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  svg::Document d(W, H);
  d.rect(0, 0, W, H, "#ffffff");
  d.text(W / 2, 22, title, 14, "middle");
  auto px = [&](double x) { return L + (W - L - R) * x / x1; };
  auto py = [&](double y) { return T + (H - T - B) * (1 - (y - y0) / (y1 - y0)); };
  d.line(L, H - B, W - R, H - B);
  d.line(L, T, L, H - B);
  for (int i = 0; i <= 4; ++i) {
    const double y = y0 + (y1 - y0) * i / 4, x = x1 * i / 4;
    d.text(L - 6, py(y) + 4, svg::num(y), 10, "end");
    d.text(px(x), H - B + 16, svg::num(x), 10, "middle");
  }
  d.text((L + W - R) / 2, H - 8, "tokens", 11, "middle");
  d.text(16, (T + H - B) / 2, y_label, 11, "middle", -90);
  for (size_t i = 0; i < curves.size(); ++i) {
    std::vector<std::pair<double, double>> pts;
    for (auto [x, y] : curves[i].points) pts.emplace_back(px(x), py(y));
    if (pts.size() > 1) d.polyline(pts, curves[i].color);
    d.line(W - R + 12, T + 16 + 18 * i, W - R + 32, T + 16 + 18 * i, curves[i].color, 2.5);
    d.text(W - R + 38, T + 20 + 18 * i, curves[i].name, 11);
  }
  return d.str();
}

std::string series_color(size_t i) {
  static const char* const colors[] = {"#444444", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e",
                                       "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"};
  return colors[i % (sizeof colors / sizeof colors[0])];
}

}  // namespace finmoe::cli
