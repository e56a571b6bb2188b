#include "cli/experiment.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "cli/pipeline.h"
#include "core/file_util.h"
#include "core/yaml_bounds.h"
#include "core/yaml_json.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "tokenizer/jinja.h"

namespace finmoe::cli {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// Bumped when the meaning of a stage key changes: every cached stage reruns.
constexpr int kEngineVersion = 1;

// ---- recipe text -----------------------------------------------------------------

ojson parse_yaml(const std::string& text, const std::string& source) {
  check_yaml_bounds(text, source);
  try {
    return yaml_to_json(YAML::Load(text), source);
  } catch (const YAML::Exception& e) {
    throw Error(source + ": " + e.what());
  }
}

void check_keys(const ojson& o, const std::set<std::string>& allowed, const std::string& where) {
  if (!o.is_object()) throw Error(where + " must be a mapping");
  for (auto it = o.begin(); it != o.end(); ++it) {
    if (allowed.count(it.key())) continue;
    std::string list;
    for (const auto& k : allowed) list += (list.empty() ? "" : ", ") + k;
    throw Error(where + ": unknown key '" + it.key() + "' (known: " + list + ")");
  }
}

std::string str_of(const ojson& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number() || v.is_boolean()) return v.dump();
  throw Error(where + " must be a string");
}

// ---- templates -------------------------------------------------------------------

jinja::Options template_options() {
  jinja::Options o;
  o.trim_blocks = false;
  o.lstrip_blocks = false;
  o.keep_trailing_newline = true;
  return o;
}

std::string render(const std::string& text, const ojson& ctx, const std::string& where) {
  if (text.find("{{") == std::string::npos && text.find("{%") == std::string::npos) return text;
  try {
    return jinja::Template(text, template_options()).render(ctx);
  } catch (const Error& e) {
    std::string m = e.what();
    if (m.starts_with("chat template ")) m = m.substr(5);  // the interpreter's prefix
    throw Error(where + ": " + m);
  }
}

// Parses a template without rendering it: a syntax error is an error naming
// `where` when the recipe is read, even in a stage whose rendering waits for
// the results of earlier stages (a dry run cannot render those).
void check_syntax(const std::string& text, const std::string& where) {
  if (text.find("{{") == std::string::npos && text.find("{%") == std::string::npos) return;
  try {
    jinja::Template t(text, template_options());
  } catch (const Error& e) {
    std::string m = e.what();
    if (m.starts_with("chat template ")) m = m.substr(5);  // the interpreter's prefix
    throw Error(where + ": " + m);
  }
}

// A matrix axis: a list, or a template naming a list ("{{ lrs }}" takes the
// value itself; anything else must render to JSON).
ojson axis_values(const ojson& v, const ojson& ctx, const std::string& where) {
  if (v.is_array()) return v;
  if (v.is_string()) {
    static const std::regex bare(R"(^\s*\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$)");
    std::smatch m;
    const std::string s = v.get<std::string>();
    if (std::regex_match(s, m, bare) && ctx.contains(m[1].str()) && ctx[m[1].str()].is_array())
      return ctx[m[1].str()];
    const std::string r = render(s, ctx, where);
    ojson j;
    try {
      j = ojson::parse(r);
    } catch (const std::exception&) {
      throw Error(where + ": '" + r + "' is not a JSON list (write {{ name | tojson }})");
    }
    if (j.is_array()) return j;
    throw Error(where + ": '" + r + "' is not a list");
  }
  return ojson::array({v});
}

// Every combination of the axes, the first axis slowest.
std::vector<ojson> combinations(const ojson& matrix, const ojson& ctx, const std::string& where) {
  std::vector<ojson> out{ojson::object()};
  if (matrix.is_null()) return out;
  if (!matrix.is_object()) throw Error(where + " must be a mapping of axis: values");
  for (auto it = matrix.begin(); it != matrix.end(); ++it) {
    const ojson values = axis_values(it.value(), ctx, where + "." + it.key());
    if (values.empty()) throw Error(where + "." + it.key() + " has no values");
    std::vector<ojson> next;
    for (const auto& c : out)
      for (const auto& v : values) {
        ojson d = c;
        d[it.key()] = v;
        next.push_back(std::move(d));
      }
    out = std::move(next);
  }
  return out;
}

ojson merged(ojson base, const ojson& add) {
  for (auto it = add.begin(); it != add.end(); ++it) base[it.key()] = it.value();
  return base;
}

std::string safe_name(const std::string& s) {
  std::string o;
  for (char c : s) o += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ? c : '_';
  return o.empty() ? "_" : o;
}

std::string tail_of(const std::string& path, size_t lines) {
  std::ifstream f(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(f, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "  | " + all[i] + "\n";
  return out;
}

std::string fmt_seconds(double s) {
  char b[32];
  if (s < 60) std::snprintf(b, sizeof b, "%.0f s", s);
  else std::snprintf(b, sizeof b, "%d min %02d s", int(s) / 60, int(s) % 60);
  return b;
}

// ---- the recipe --------------------------------------------------------------------

struct Command {
  std::vector<std::string> args;
  std::string stdout_file;  // from a trailing "> FILE"
};

struct StageSpec {
  std::string name;  // template
  ojson matrix;
  bool shared = false;
  ojson files = ojson::object();  // file name -> template
  std::vector<std::vector<std::string>> run;  // templates
  // template of a JSON file's path, or a mapping of names to such templates
  // (the stage's result is then an object of those files); null = none
  ojson result;
  std::string where;
};

struct Stage {
  const StageSpec* spec;
  ojson vars;
  std::string name;
};

struct Recipe {
  std::string path, name, title, paper, claim, notes;
  int64_t version = 0;
  ojson params = ojson::object();
  std::vector<StageSpec> stages;
  ojson tables = ojson::array();
  ojson curves = ojson::array();
};

// `include:` files (relative to the recipe): their params and stages come
// first; the recipe's own params override theirs.
ojson with_includes(ojson y, const std::string& path) {
  if (!y.contains("include")) return y;
  const ojson inc = y["include"].is_string() ? ojson::array({y["include"]}) : y["include"];
  if (!inc.is_array()) throw Error(path + ": 'include' must be a file name or a list of them");
  ojson params = ojson::object(), stages = ojson::array();
  for (const auto& f : inc) {
    const std::string file = (fs::path(path).parent_path() / str_of(f, path + ": include")).string();
    if (!fs::exists(file)) throw Error(path + ": include " + file + " does not exist");
    const ojson part = parse_yaml(read_text_file(file), file);
    check_keys(part, {"params", "stages"}, file);
    if (part.contains("params")) params = merged(params, part["params"]);
    if (part.contains("stages")) {
      if (!part["stages"].is_array()) throw Error(file + ": 'stages' must be a list");
      for (const auto& s : part["stages"]) stages.push_back(s);
    }
  }
  if (y.contains("params")) {
    if (!y["params"].is_object()) throw Error(path + ": 'params' must be a mapping");
    params = merged(params, y["params"]);
  }
  if (y.contains("stages")) {
    if (!y["stages"].is_array()) throw Error(path + ": 'stages' must be a list");
    for (const auto& s : y["stages"]) stages.push_back(s);
  }
  y["params"] = params;
  y["stages"] = stages;
  y.erase("include");
  return y;
}

Recipe load_recipe(const std::string& path) {
  const ojson y = with_includes(parse_yaml(read_text_file(path), path), path);
  check_keys(y, {"experiment", "version", "title", "paper", "claim", "notes", "params", "stages", "tables", "curves"},
             path);
  Recipe r;
  r.path = path;
  auto need = [&](const char* k) -> const ojson& {
    if (!y.contains(k)) throw Error(path + ": '" + k + "' is required");
    return y[k];
  };
  r.name = str_of(need("experiment"), path + ": experiment");
  if (!need("version").is_number_integer()) throw Error(path + ": 'version' must be an integer");
  r.version = y["version"].get<int64_t>();
  r.title = y.contains("title") ? str_of(y["title"], path + ": title") : r.name;
  if (y.contains("paper")) r.paper = str_of(y["paper"], path + ": paper");
  if (y.contains("claim")) r.claim = str_of(y["claim"], path + ": claim");
  if (y.contains("notes")) r.notes = str_of(y["notes"], path + ": notes");
  if (y.contains("params")) {
    if (!y["params"].is_object()) throw Error(path + ": 'params' must be a mapping");
    r.params = y["params"];
  }
  const ojson& stages = need("stages");
  if (!stages.is_array() || stages.empty()) throw Error(path + ": 'stages' must be a non-empty list");
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string where = path + ": stages[" + std::to_string(i) + "]";
    const ojson& s = stages[i];
    check_keys(s, {"name", "matrix", "shared", "files", "run", "result"}, where);
    StageSpec spec;
    spec.where = where;
    if (!s.contains("name")) throw Error(where + ": 'name' is required");
    spec.name = str_of(s["name"], where + ".name");
    check_syntax(spec.name, where + ".name");
    if (s.contains("matrix")) spec.matrix = s["matrix"];
    if (s.contains("shared")) {
      if (!s["shared"].is_boolean()) throw Error(where + ".shared must be true or false");
      spec.shared = s["shared"].get<bool>();
    }
    if (s.contains("files")) {
      if (!s["files"].is_object()) throw Error(where + ".files must be a mapping of file name: text");
      spec.files = s["files"];
      for (auto it = spec.files.begin(); it != spec.files.end(); ++it) {
        if (it.key().find('/') != std::string::npos || it.key().starts_with("."))
          throw Error(where + ".files: '" + it.key() + "' must be a plain file name");
        check_syntax(str_of(it.value(), where + ".files." + it.key()), where + ".files." + it.key());
      }
    }
    if (!s.contains("run") || !s["run"].is_array() || s["run"].empty())
      throw Error(where + ": 'run' must be a list of commands");
    // one command (a list of arguments) or a list of commands
    const ojson cmds = s["run"][0].is_array() ? s["run"] : ojson::array({s["run"]});
    for (size_t c = 0; c < cmds.size(); ++c) {
      const std::string cw = where + ".run[" + std::to_string(c) + "]";
      if (!cmds[c].is_array() || cmds[c].empty()) throw Error(cw + " must be a list of arguments");
      std::vector<std::string> args;
      for (size_t a = 0; a < cmds[c].size(); ++a) {
        const std::string aw = cw + "[" + std::to_string(a) + "]";
        args.push_back(str_of(cmds[c][a], aw));
        check_syntax(args.back(), aw);
      }
      spec.run.push_back(std::move(args));
    }
    if (s.contains("result")) {
      spec.result = s["result"];
      if (spec.result.is_object()) {
        for (auto it = spec.result.begin(); it != spec.result.end(); ++it)
          check_syntax(str_of(it.value(), where + ".result." + it.key()), where + ".result." + it.key());
      } else {
        check_syntax(str_of(spec.result, where + ".result"), where + ".result");
      }
    }
    r.stages.push_back(std::move(spec));
  }
  if (y.contains("tables")) {
    if (!y["tables"].is_array()) throw Error(path + ": 'tables' must be a list");
    r.tables = y["tables"];
    for (size_t i = 0; i < r.tables.size(); ++i) {
      const std::string where = path + ": tables[" + std::to_string(i) + "]";
      check_keys(r.tables[i], {"title", "rows", "over", "columns", "baseline"}, where);
      if (!r.tables[i].contains("columns") || !r.tables[i]["columns"].is_array())
        throw Error(where + ": 'columns' must be a list");
      for (size_t c = 0; c < r.tables[i]["columns"].size(); ++c) {
        const ojson& col = r.tables[i]["columns"][c];
        const std::string cw = where + ".columns[" + std::to_string(c) + "]";
        check_keys(col, {"name", "value", "format", "better"}, cw);
        if (col.contains("value") && col["value"].is_string())
          check_syntax(col["value"].get<std::string>(), cw + ".value");
      }
    }
  }
  if (y.contains("curves")) {
    if (!y["curves"].is_array()) throw Error(path + ": 'curves' must be a list");
    r.curves = y["curves"];
    for (size_t i = 0; i < r.curves.size(); ++i) {
      const std::string cw = path + ": curves[" + std::to_string(i) + "]";
      check_keys(r.curves[i], {"title", "file", "metric", "series", "label", "run"}, cw);
      for (const char* k : {"label", "run"})
        if (r.curves[i].contains(k) && r.curves[i][k].is_string())
          check_syntax(r.curves[i][k].get<std::string>(), cw + "." + k);
    }
  }
  return r;
}

std::string find_recipe(const std::string& name) {
  if (name.ends_with(".yaml") || name.ends_with(".yml") || name.find('/') != std::string::npos) {
    if (!fs::exists(name)) throw Error("experiment recipe " + name + " does not exist");
    return name;
  }
  for (const auto& d : recipe_dirs())
    if (fs::exists(d + "/" + name + ".yaml")) return d + "/" + name + ".yaml";
  std::string known;
  for (const auto& [n, t] : list_recipes()) known += "\n  " + n + "  " + t;
  throw Error("unknown experiment '" + name + "'" +
              (known.empty() ? " (no recipe directory found; set FINMOE_EXPERIMENTS)" : "; known:" + known));
}

// ---- running -------------------------------------------------------------------------

// An exclusive flock on PATH, held while the object lives.
class FileLock {
 public:
  // wait = false: throws Error `busy` when another process holds it.
  FileLock(const std::string& path, bool wait, const std::string& busy) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_errno("open lock", path);
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    if (!wait) {
      ::close(fd_);
      throw Error(busy);
    }
    std::cout << "    " << busy << "; waiting\n" << std::flush;
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) throw_errno("flock", path);
    }
  }
  ~FileLock() { ::close(fd_); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

class Runner {
 public:
  Runner(const ExperimentOptions& o, Recipe r) : o_(o), r_(std::move(r)) {
    out_ = fs::absolute(o_.out.empty() ? "experiments-out/" + r_.name : o_.out).lexically_normal().string();
    std::string cache = o_.cache;
    if (cache.empty()) {
      const char* home = std::getenv("HOME");
      cache = std::string(home ? home : ".") + "/.cache/finmoe/experiments";
    }
    cache_ = fs::absolute(cache).lexically_normal().string();
    build_context();
    expand();
  }

  int run() {
    std::optional<FileLock> lock;
    if (!o_.dry_run) {
      fs::create_directories(out_ + "/stages");
      fs::create_directories(cache_);
      lock.emplace(out_ + "/.lock", false, "another `finmoe experiment` is writing " + out_);
    }
    std::cout << r_.title << " (" << r_.path << ", version " << r_.version << ")\n"
              << "scale " << o_.scale << ", seeds " << o_.seeds << ", device " << o_.device << "; "
              << stages_.size() << " stages; output " << out_ << "\n";
    double run_seconds = 0;
    int64_t ran = 0;
    for (size_t i = 0; i < stages_.size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const bool did = run_stage(i);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (did) {
        run_seconds += s, ++ran;
        // every later stage counted as one to run (cached ones are found as they come)
        const double eta = run_seconds / double(ran) * double(stages_.size() - i - 1);
        std::cout << "    done in " << fmt_seconds(s) << (eta > 0 ? "; ETA " + fmt_seconds(eta) : "") << "\n"
                  << std::flush;
      }
    }
    if (o_.dry_run) return 0;
    report();
    return 0;
  }

 private:
  void build_context() {
    ctx_ = ojson::object();
    ctx_["experiment"] = r_.name;
    ctx_["version"] = r_.version;
    ctx_["scale"] = o_.scale;
    ojson seeds = ojson::array();
    for (int64_t s = 1; s <= o_.seeds; ++s) seeds.push_back(s);
    ctx_["seeds"] = seeds;
    ctx_["device"] = o_.device;
    ctx_["out"] = out_;
    ctx_["cache"] = cache_;
    for (const auto& [k, v] : o_.set)
      if (!r_.params.contains(k)) {
        std::string known;
        for (auto it = r_.params.begin(); it != r_.params.end(); ++it) known += (known.empty() ? "" : ", ") + it.key();
        throw Error("--set " + k + ": " + r_.path + " has no parameter '" + k + "' (parameters: " + known + ")");
      }
    for (auto it = r_.params.begin(); it != r_.params.end(); ++it) {
      const std::string where = r_.path + ": params." + it.key();
      if (ctx_.contains(it.key())) throw Error(where + ": the name is a built-in");
      ojson v = it.value();
      if (auto s = o_.set.find(it.key()); s != o_.set.end()) {
        v = parse_yaml(s->second, "--set " + it.key());
      } else if (v.is_object()) {
        check_keys(v, {"scaled", "min"}, where);
        if (!v.contains("scaled") || !v["scaled"].is_number()) throw Error(where + ".scaled must be a number");
        const double min = v.contains("min") ? v["min"].get<double>() : 1.0;
        v = int64_t(std::max(min, std::round(v["scaled"].get<double>() * o_.scale)));
      }
      ctx_[it.key()] = v;
    }
  }

  void expand() {
    std::set<std::string> names;
    for (const auto& spec : r_.stages) {
      for (const ojson& vars : combinations(spec.matrix, ctx_, spec.where + ".matrix")) {
        Stage st{&spec, vars, render(spec.name, merged(ctx_, vars), spec.where + ".name")};
        if (st.name.empty()) throw Error(spec.where + ": the name renders empty");
        if (!names.insert(st.name).second)
          throw Error(spec.where + ": two stages are named '" + st.name + "' (add the matrix values to the name)");
        stages_.push_back(std::move(st));
      }
    }
  }

  struct Rendered {
    std::map<std::string, std::string> files;
    std::vector<Command> commands;
    std::map<std::string, std::string> results;  // name ("" = the one file) -> path
  };

  Rendered render_stage(const Stage& st, const std::string& dir) {
    ojson c = merged(ctx_, st.vars);
    c["dir"] = dir;
    c["stages"] = stage_ctx_;
    c["name"] = st.name;
    const std::string w = st.spec->where + " (" + st.name + ")";
    Rendered r;
    for (auto it = st.spec->files.begin(); it != st.spec->files.end(); ++it)
      r.files[it.key()] = render(it.value().get<std::string>(), c, w + ".files." + it.key());
    for (size_t k = 0; k < st.spec->run.size(); ++k) {
      Command cmd;
      for (size_t a = 0; a < st.spec->run[k].size(); ++a)
        cmd.args.push_back(render(st.spec->run[k][a], c,
                                  w + ".run[" + std::to_string(k) + "][" + std::to_string(a) + "]"));
      if (cmd.args.size() >= 2 && cmd.args[cmd.args.size() - 2] == ">") {
        cmd.stdout_file = cmd.args.back();
        cmd.args.resize(cmd.args.size() - 2);
      }
      if (cmd.args.empty()) throw Error(w + ".run[" + std::to_string(k) + "] has no arguments");
      r.commands.push_back(std::move(cmd));
    }
    if (st.spec->result.is_string()) {
      r.results[""] = render(st.spec->result.get<std::string>(), c, w + ".result");
    } else if (st.spec->result.is_object()) {
      for (auto it = st.spec->result.begin(); it != st.spec->result.end(); ++it)
        r.results[it.key()] = render(it.value().get<std::string>(), c, w + ".result." + it.key());
    }
    return r;
  }

  // The key: what the stage runs, and the keys of the earlier stages whose
  // directories it names.
  std::string key_of(const Stage& st, const Rendered& r) const {
    std::ostringstream content;
    for (const auto& [n, t] : r.files) content << "file " << n << "\n" << t << "\n";
    for (const auto& c : r.commands) {
      content << "run";
      for (const auto& a : c.args) content << " " << ojson(a).dump();
      content << " > " << c.stdout_file << "\n";
    }
    for (const auto& [n, path] : r.results) content << "result " << n << " " << path << "\n";
    const std::string text = content.str();
    std::ostringstream s;
    s << "engine " << kEngineVersion << "\n";
    if (!st.spec->shared) s << "recipe " << r_.name << " version " << r_.version << "\n";
    s << text;
    for (const auto& [dir, key] : dirs_)
      if (text.find(dir) != std::string::npos) s << "upstream " << key << "\n";
    return hash_key(s.str());
  }

  // Returns whether it ran commands.
  bool run_stage(size_t i) {
    const Stage& st = stages_[i];
    std::string dir;
    Rendered r;
    std::string key;
    try {
      if (st.spec->shared) {
        // the directory is named by the key, which is computed without it
        const std::string placeholder = "@STAGE_DIR@";
        key = key_of(st, render_stage(st, placeholder));
        dir = cache_ + "/" + safe_name(st.name) + "-" + key.substr(0, 12);
        r = render_stage(st, dir);
      } else {
        dir = out_ + "/stages/" + safe_name(st.name);
        r = render_stage(st, dir);
        key = key_of(st, r);
      }
    } catch (const Error& e) {
      if (!o_.dry_run) throw;
      std::cout << "[" << i + 1 << "/" << stages_.size() << "] " << st.name
                << "  (its commands depend on results of earlier stages: " << e.what() << ")\n";
      stage_ctx_[st.name] = {{"dir", ""}, {"result", nullptr}};
      return false;
    }
    // a shared stage is run by one experiment at a time; the others wait and
    // then find it finished
    std::optional<FileLock> lock;
    if (st.spec->shared && !o_.dry_run)
      lock.emplace(dir + ".lock", true, "another experiment is running shared stage '" + st.name + "'");
    const std::string marker = dir + "/" + kStepMarker;
    const StepState state = step_state(dir, key);
    std::cout << "[" << i + 1 << "/" << stages_.size() << "] " << st.name;
    if (state == StepState::Cached) std::cout << "  cached (" << dir << ")\n";
    else if (state == StepState::Stale)
      std::cout << "  its cached output in " << dir
                << " was made by other inputs (recipe or upstream changed): rerunning\n";
    else if (state == StepState::Unfinished)
      std::cout << "  " << dir << " holds an unfinished run: rerunning\n";
    else std::cout << "\n";
    for (const auto& c : r.commands) {
      std::string line = "$ " + command_line(c.args) + (c.stdout_file.empty() ? "" : " > " + c.stdout_file);
      commands_ += "# " + st.name + "\n" + line.substr(2) + "\n";
      if (state != StepState::Cached || o_.dry_run) std::cout << "    " << line << "\n";
    }
    for (const auto& [n, t] : r.files) commands_ += "#   (writes " + dir + "/" + n + " from the recipe)\n";
    dirs_.emplace_back(dir, key);
    bool ran = false;
    double seconds = 0;
    if (!o_.dry_run && state != StepState::Cached) {
      if (fs::exists(dir)) remove_tree(dir);
      fs::create_directories(dir);
      for (const auto& [n, t] : r.files) write_text(dir + "/" + n, t);
      const std::string log = dir + "/log.txt";
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& c : r.commands) {
        {
          std::ofstream(log, std::ios::app) << "$ " << command_line(c.args) << "\n";
        }
        const int status = run_finmoe(c.args, c.stdout_file, o_.verbose ? "" : log);
        if (status != 0)
          throw Error("experiment " + r_.name + ": stage '" + st.name + "' failed: `" + command_line(c.args) +
                      "` exited with status " + std::to_string(status) +
                      (o_.verbose ? "" : "; its log " + log + " ends:\n" + tail_of(log, 25)));
      }
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      nlohmann::json m = {{"stage", st.name}, {"experiment", r_.name}, {"version", r_.version},
                          {"seconds", seconds}};
      m["commands"] = nlohmann::json::array();
      for (const auto& c : r.commands) m["commands"].push_back(command_line(c.args));
      mark_step_finished(dir, key, std::move(m));
      ran = true;
    } else if (state == StepState::Cached) {
      try {
        seconds = ojson::parse(read_text_file(marker)).value("seconds", 0.0);
      } catch (const std::exception&) {
      }
    }
    ojson result = nullptr;
    // a dry run reads the results of cached stages: later stages render as they will run
    if (!o_.dry_run || state == StepState::Cached) {
      for (const auto& [n, path] : r.results) {
        ojson value;
        try {
          value = ojson(read_json(path));
        } catch (const std::exception& e) {
          throw Error(r_.path + ": stage " + st.name + ": result" + (n.empty() ? "" : " '" + n + "'") +
                      " must name a JSON file the stage wrote: " + e.what());
        }
        if (n.empty()) result = std::move(value);
        else result[n] = std::move(value);
      }
    }
    stage_ctx_[st.name] = {{"dir", dir}, {"result", result}};
    records_.push_back({{"name", st.name}, {"vars", st.vars}, {"dir", dir}, {"key", key},
                        {"cached", state == StepState::Cached}, {"seconds", seconds}, {"result", result}});
    return ran;
  }

  // ---- report ----
  struct Cell {
    std::vector<double> values;
    std::string text;  // a non-numeric value
    double mean() const {
      double s = 0;
      for (double v : values) s += v;
      return values.empty() ? 0 : s / double(values.size());
    }
    double sd() const {  // sample standard deviation; exactly 0 for equal values
      if (values.size() < 2 || std::all_of(values.begin(), values.end(), [&](double v) { return v == values[0]; }))
        return 0;
      const double m = mean();
      double s = 0;
      for (double v : values) s += (v - m) * (v - m);
      return std::sqrt(s / double(values.size() - 1));
    }
  };

  static std::string cell_text(const Cell& c, const std::string& fmt) {
    if (c.values.empty()) return c.text.empty() ? "-" : c.text;
    char a[64], b[64];
    std::snprintf(a, sizeof a, fmt.c_str(), c.mean());
    if (c.values.size() < 2 || c.sd() == 0) return a;
    std::snprintf(b, sizeof b, fmt.c_str(), c.sd());
    return std::string(a) + " ± " + b;
  }

  void report() {
    ojson results = {{"experiment", r_.name}, {"version", r_.version}, {"title", r_.title},
                     {"paper", r_.paper}, {"claim", r_.claim}, {"recipe", fs::absolute(r_.path).string()},
                     {"scale", o_.scale}, {"seeds", o_.seeds}, {"device", o_.device}};
    ojson params = ojson::object();
    for (auto it = r_.params.begin(); it != r_.params.end(); ++it) params[it.key()] = ctx_[it.key()];
    results["params"] = params;
    results["stages"] = records_;
    results["tables"] = ojson::array();
    std::ostringstream md;
    md << "# " << r_.title << "\n\n";
    if (!r_.paper.empty()) md << "Paper: " << r_.paper << "\n\n";
    if (!r_.claim.empty()) md << "Claim: " << r_.claim << "\n\n";
    md << "Run: `finmoe experiment " << r_.name << " --scale " << o_.scale << " --seeds " << o_.seeds
       << (o_.device == "cpu" ? "" : " --device " + o_.device) << "`";
    for (const auto& [k, v] : o_.set) md << " `--set " << k << "=" << v << "`";
    md << "; recipe version " << r_.version << ".\n\n";
    for (size_t ti = 0; ti < r_.tables.size(); ++ti) {
      const ojson& t = r_.tables[ti];
      const std::string where = r_.path + ": tables[" + std::to_string(ti) + "]";
      const std::string over = t.contains("over") ? str_of(t["over"], where + ".over") : "seed";
      const ojson over_values = over == "none" ? ojson::array({nullptr}) : axis_values(ojson("{{ seeds }}"), ctx_, where);
      std::vector<ojson> rows = combinations(t.contains("rows") ? t["rows"] : ojson(), ctx_, where + ".rows");
      const ojson& cols = t["columns"];
      ojson jt = {{"title", t.value("title", "")}, {"over", over}, {"rows", ojson::array()}};
      std::vector<std::vector<Cell>> cells(rows.size(), std::vector<Cell>(cols.size()));
      for (size_t ri = 0; ri < rows.size(); ++ri) {
        ojson jr = {{"keys", rows[ri]}, {"values", ojson::object()}};
        for (size_t ci = 0; ci < cols.size(); ++ci) {
          const std::string cw = where + ".columns[" + std::to_string(ci) + "]";
          const std::string tmpl = str_of(cols[ci].value("value", ojson("")), cw + ".value");
          Cell& cell = cells[ri][ci];
          for (const auto& ov : over_values) {
            ojson c = merged(ctx_, rows[ri]);
            if (over != "none") c[over] = ov;
            c["stages"] = stage_ctx_;
            const std::string v = render(tmpl, c, cw + ".value");
            char* end = nullptr;
            const double d = std::strtod(v.c_str(), &end);
            if (!v.empty() && end && *end == '\0' && std::isfinite(d)) cell.values.push_back(d);
            else if (cell.text.empty()) cell.text = v;
          }
          jr["values"][str_of(cols[ci].value("name", ojson("")), cw + ".name")] = {
              {"values", cell.values}, {"mean", cell.values.empty() ? ojson(nullptr) : ojson(cell.mean())},
              {"sd", cell.values.size() < 2 ? ojson(nullptr) : ojson(cell.sd())}, {"n", cell.values.size()},
              {"text", cell.text}};
        }
        jt["rows"].push_back(jr);
      }
      // the table
      std::vector<std::string> axes;
      if (!rows.empty())
        for (auto it = rows[0].begin(); it != rows[0].end(); ++it) axes.push_back(it.key());
      md << "## " << t.value("title", "table " + std::to_string(ti + 1)) << "\n\n|";
      for (const auto& a : axes) md << " " << a << " |";
      for (const auto& c : cols) md << " " << c.value("name", "") << " |";
      md << "\n|";
      for (size_t k = 0; k < axes.size() + cols.size(); ++k) md << "---|";
      md << "\n";
      auto value_text = [](const ojson& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
      for (size_t ri = 0; ri < rows.size(); ++ri) {
        md << "|";
        for (const auto& a : axes) md << " " << value_text(rows[ri][a]) << " |";
        for (size_t ci = 0; ci < cols.size(); ++ci)
          md << " " << cell_text(cells[ri][ci], cols[ci].value("format", "%.4g")) << " |";
        md << "\n";
      }
      if (over != "none")
        md << "\nMean ± sample standard deviation over " << over_values.size() << " " << over << "s ("
           << over_values.dump() << ").\n";
      // differences from the baseline row
      if (t.contains("baseline")) {
        // a row's baseline: the row with the baseline's values on its axes and
        // this row's values on the others (e.g. per task)
        const ojson& base = t["baseline"];
        if (!base.is_object() || base.empty()) throw Error(where + ".baseline must be a mapping of axis: value");
        auto baseline_of = [&](size_t ri) -> size_t {
          for (size_t bi = 0; bi < rows.size(); ++bi) {
            bool match = true;
            for (auto it = rows[bi].begin(); it != rows[bi].end(); ++it)
              match &= base.contains(it.key()) ? it.value() == base[it.key()] : it.value() == rows[ri][it.key()];
            if (match) return bi;
          }
          return rows.size();
        };
        for (auto it = base.begin(); it != base.end(); ++it)
          if (std::none_of(rows.begin(), rows.end(), [&](const ojson& r) { return r.value(it.key(), ojson()) == it.value(); }))
            throw Error(where + ".baseline " + base.dump() + " matches no row");
        md << "\nAgainst the baseline (" << base.dump() << (axes.size() > base.size() ? ", per " : "");
        bool first = true;
        for (const auto& ax : axes)
          if (!base.contains(ax)) md << (first ? "" : ", ") << ax, first = false;
        md << "), a difference counts when it is larger than the two rows' standard deviations added "
           << "(columns the seed does not change are left out):\n\n";
        ojson jd = ojson::array();
        for (size_t ri = 0; ri < rows.size(); ++ri) {
          const size_t bi = baseline_of(ri);
          if (bi == rows.size() || bi == ri) continue;
          for (size_t ci = 0; ci < cols.size(); ++ci) {
            const Cell &a = cells[ri][ci], &b = cells[bi][ci];
            if (a.values.size() < 2 || b.values.size() < 2) continue;
            const double d = a.mean() - b.mean(), spread = a.sd() + b.sd();
            // values the seed does not change (a parameter count) differ exactly: the table shows them
            if (spread == 0) continue;
            const bool larger = std::abs(d) > spread;
            std::string row;
            for (const auto& ax : axes) row += (row.empty() ? "" : ", ") + ax + " " + value_text(rows[ri][ax]);
            char buf[256];
            const std::string f = cols[ci].value("format", "%.4g");
            char dv[64], sv[64];
            std::snprintf(dv, sizeof dv, f.c_str(), d);
            std::snprintf(sv, sizeof sv, f.c_str(), spread);
            std::snprintf(buf, sizeof buf, "- %s, %s: %s%s (spread %s) — %s\n", row.c_str(),
                          cols[ci].value("name", "").c_str(), d >= 0 ? "+" : "", dv, sv,
                          larger ? "**larger than the spread**" : "within the spread");
            md << buf;
            jd.push_back({{"row", rows[ri]}, {"column", cols[ci].value("name", "")}, {"difference", d},
                          {"spread", spread}, {"larger_than_spread", larger}});
          }
        }
        jt["baseline"] = base;
        jt["differences"] = jd;
      }
      md << "\n";
      results["tables"].push_back(jt);
    }
    // curves
    for (size_t ci = 0; ci < r_.curves.size(); ++ci) {
      const ojson& cv = r_.curves[ci];
      const std::string where = r_.path + ": curves[" + std::to_string(ci) + "]";
      const std::string file = str_of(cv.value("file", ojson("curve" + std::to_string(ci + 1) + ".svg")), where + ".file");
      const std::string metric = str_of(cv.value("metric", ojson("loss")), where + ".metric");
      std::vector<Curve> curves;
      size_t k = 0;
      for (const ojson& vars : combinations(cv.contains("series") ? cv["series"] : ojson(), ctx_, where + ".series")) {
        ojson c = merged(ctx_, vars);
        c["stages"] = stage_ctx_;
        const std::string run_dir = render(str_of(cv.value("run", ojson("")), where + ".run"), c, where + ".run");
        const std::string label = render(str_of(cv.value("label", ojson("")), where + ".label"), c, where + ".label");
        curves.push_back(read_curve(run_dir, label, series_color(k++), metric));
      }
      write_text(out_ + "/" + file, plot_curves(curves, cv.value("title", metric), metric));
      md << "Curves: [" << file << "](" << file << ") — " << cv.value("title", metric) << ".\n\n";
    }
    if (!r_.notes.empty()) md << r_.notes << "\n";
    write_text(out_ + "/results.json", ojson(results).dump(2) + "\n");
    write_text(out_ + "/results.md", md.str());
    write_text(out_ + "/commands.sh", "#!/bin/sh\n# " + r_.title + ": the commands of every stage, in order\nset -e\n" +
                                          commands_);
    std::cout << "\n" << md.str() << "results in " << out_ << " (results.json, results.md, commands.sh)\n";
  }

  const ExperimentOptions& o_;
  Recipe r_;
  std::string out_, cache_;
  ojson ctx_;
  std::vector<Stage> stages_;
  ojson stage_ctx_ = ojson::object();
  std::vector<std::pair<std::string, std::string>> dirs_;  // (dir, key) of every stage so far
  ojson records_ = ojson::array();
  std::string commands_;
};

}  // namespace

std::vector<std::string> recipe_dirs() {
  std::vector<std::string> dirs;
  if (const char* e = std::getenv("FINMOE_EXPERIMENTS"); e && *e) dirs.push_back(e);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& d : {exe.parent_path().parent_path() / "experiments",
                              exe.parent_path().parent_path() / "share/finmoe/experiments"})
      if (fs::is_directory(d)) dirs.push_back(d.lexically_normal().string());
  }
  return dirs;
}

std::map<std::string, std::string> list_recipes() {
  std::map<std::string, std::string> out;
  for (const auto& d : recipe_dirs()) {
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.path().extension() != ".yaml") continue;
      const std::string name = e.path().stem().string();
      if (out.count(name)) continue;
      try {
        out[name] = load_recipe(e.path().string()).title;
      } catch (const Error& err) {
        out[name] = std::string("(invalid: ") + err.what() + ")";
      }
    }
  }
  return out;
}

int run_experiment(const ExperimentOptions& o) {
  if (o.scale <= 0 || !std::isfinite(o.scale)) throw Error("--scale must be positive");
  if (o.seeds < 1) throw Error("--seeds must be at least 1");
  Recipe r = load_recipe(find_recipe(o.recipe));
  const std::string stem = fs::path(r.path).stem().string();
  if (!o.recipe.ends_with(".yaml") && r.name != stem)
    throw Error(r.path + ": experiment '" + r.name + "' differs from the file name '" + stem + "'");
  Runner runner(o, std::move(r));
  return runner.run();
}

}  // namespace finmoe::cli
