// Debian packages in a download cache: `apt-get download` + `dpkg-deb -x`.
#include "data/debian_package.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/file_util.h"
#include "finmoe/config.h"
#include "finmoe/corpus.h"
#include "finmoe/error.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace data {

ProcessResult run_process(const std::vector<std::string>& argv, const std::string& cwd) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("cannot create a pipe for", argv.at(0));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw_errno("cannot start", argv.at(0));
  }
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) {
      std::string msg = "cannot enter " + cwd + ": " + std::strerror(errno) + "\n";
      (void)!::write(1, msg.data(), msg.size());
      ::_exit(127);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::string msg = argv[0] + ": " + std::strerror(errno) + "\n";
    (void)!::write(1, msg.data(), msg.size());
    ::_exit(127);
  }
  ::close(fds[1]);
  ProcessResult r;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.output.append(buf, size_t(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string read_maybe_gzipped(const std::string& path) {
  gzFile f = ::gzopen(path.c_str(), "rb");
  if (!f) throw_errno("cannot open", path);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    int n = ::gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int code = 0;
      std::string msg = ::gzerror(f, &code);
      ::gzclose(f);
      throw Error("cannot read " + path + ": " + msg);
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::gzclose(f);
  return out;
}

std::vector<std::string> list_files(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir + ": no such directory");
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file(ec)) out.push_back(fs::relative(it->path(), dir).string());
  if (ec) throw Error("cannot list " + dir + ": " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace data

namespace {

// The last `n` lines of a command's output, for an error message.
std::string tail_lines(const std::string& s, int n) {
  size_t p = s.size();
  while (p > 0 && (s[p - 1] == '\n' || s[p - 1] == ' ')) --p;
  size_t end = p;
  for (int k = 0; k < n && p > 0; ++k) {
    p = s.rfind('\n', p - 1);
    if (p == std::string::npos) {
      p = 0;
      break;
    }
  }
  std::string t = s.substr(p, end - p);
  while (!t.empty() && t[0] == '\n') t.erase(0, 1);
  return t;
}

// The newest NAME_*.deb in the cache ("" if none).
std::string cached_deb(const std::string& name, const std::string& cache) {
  std::string best;
  fs::file_time_type best_time;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cache, ec)) {
    const std::string f = e.path().filename().string();
    if (f.size() <= name.size() + 5 || f.compare(0, name.size() + 1, name + "_") != 0 ||
        f.substr(f.size() - 4) != ".deb" || !e.is_regular_file(ec))
      continue;
    auto t = e.last_write_time(ec);
    if (best.empty() || t > best_time || (t == best_time && f > fs::path(best).filename().string())) {
      best = e.path().string();
      best_time = t;
    }
  }
  return best;
}

bool valid_package_name(const std::string& n) {
  // Debian policy: lower case letters, digits, '+', '-', '.'; starts alphanumeric.
  if (n.size() < 2 || !std::isalnum(static_cast<unsigned char>(n[0]))) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '+' ||
           c == '-' || c == '.';
  });
}

std::string read_small(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return "";
  return data::read_maybe_gzipped(path);
}

}  // namespace

std::string default_cache_dir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/finmoe/debs";
  const char* home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/finmoe/debs";
  throw Error("neither XDG_CACHE_HOME nor HOME is set: give a cache directory (--cache DIR)");
}

DebianPackage fetch_debian_package(const std::string& name, const std::string& cache_dir, bool offline) {
  if (!valid_package_name(name)) throw Error("'" + name + "' is not a Debian package name");
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  if (ec) throw Error("cannot create the package cache " + cache_dir + ": " + ec.message());

  DebianPackage p;
  p.name = name;
  p.deb = cached_deb(name, cache_dir);
  if (p.deb.empty()) {
    if (offline)
      throw Error("Debian package '" + name + "' is not in the cache " + cache_dir +
                  " (offline: no download); run without --offline or put " + name + "_*.deb there");
    // Download into a private directory, then move the .deb in: an
    // interrupted download never looks cached.
    const std::string tmp = temp_path_for(cache_dir + "/.download-" + name);
    fs::create_directories(tmp, ec);
    if (ec) throw Error("cannot create " + tmp + ": " + ec.message());
    data::ProcessResult r;
    try {
      r = data::run_process({"apt-get", "download", "-q", name}, tmp);
    } catch (...) {
      remove_tree(tmp);
      throw;
    }
    std::string got;
    for (const auto& e : fs::directory_iterator(tmp, ec))
      if (e.path().extension() == ".deb") got = e.path().string();
    if (r.status != 0 || got.empty()) {
      remove_tree(tmp);
      std::string why = r.status == 127 && r.output.find("No such file") != std::string::npos
                            ? "apt-get is not installed (this needs a Debian/Ubuntu system)"
                            : "`apt-get download " + name + "` exited with status " + std::to_string(r.status) +
                                  ":\n" + tail_lines(r.output, 6);
      throw Error("cannot download Debian package '" + name + "': " + why +
                  "\n(it needs network access to a Debian mirror; if apt has no package lists, run `apt-get "
                  "update`; or put " + name + "_*.deb into " + cache_dir + ")");
    }
    p.deb = cache_dir + "/" + fs::path(got).filename().string();
    fs::rename(got, p.deb, ec);
    remove_tree(tmp);
    if (ec) throw Error("cannot move " + got + " to " + p.deb + ": " + ec.message());
    p.downloaded = true;
  }

  // Extraction, reused while its stamp names the same .deb.
  const std::string extracted = cache_dir + "/extracted";
  fs::create_directories(extracted, ec);
  p.root = extracted + "/" + name;
  const std::string stamp_name = ".finmoe-deb";
  const std::string deb_file = fs::path(p.deb).filename().string();
  if (read_small(p.root + "/" + stamp_name) == deb_file + "\n") return p;

  const std::string tmp = temp_path_for(p.root);
  fs::create_directories(tmp, ec);
  if (ec) throw Error("cannot create " + tmp + ": " + ec.message());
  data::ProcessResult r;
  try {
    r = data::run_process({"dpkg-deb", "-x", p.deb, tmp});
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  if (r.status != 0) {
    remove_tree(tmp);
    throw Error("cannot extract Debian package '" + name + "' (" + p.deb + "): `dpkg-deb -x` exited with status " +
                std::to_string(r.status) + ":\n" + tail_lines(r.output, 6) +
                (r.status == 127 ? "\n(dpkg-deb is part of dpkg, on every Debian system)" : "\n(remove the file to download it again)"));
  }
  write_file_atomic(tmp + "/" + stamp_name, deb_file + "\n");
  if (!remove_tree(p.root)) throw Error("cannot remove the old extraction " + p.root);
  fs::rename(tmp, p.root, ec);
  if (ec) {
    remove_tree(tmp);
    throw Error("cannot move " + tmp + " to " + p.root + ": " + ec.message());
  }
  p.extracted = true;
  return p;
}

}  // namespace finmoe
