#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "finmoe/error.h"
#include "tokenizer/regex.h"

namespace finmoe::tok {

namespace {

std::string get_string(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) throw Error(where + "." + key + ": missing or not a string");
  return it->get<std::string>();
}

class UnicodeNormalizer : public Normalizer {
 public:
  UnicodeNormalizer(const std::string& type, const std::string& where) {
    UErrorCode err = U_ZERO_ERROR;
    if (type == "NFC") n_ = icu::Normalizer2::getNFCInstance(err);
    else if (type == "NFD") n_ = icu::Normalizer2::getNFDInstance(err);
    else if (type == "NFKC") n_ = icu::Normalizer2::getNFKCInstance(err);
    else n_ = icu::Normalizer2::getNFKDInstance(err);
    if (U_FAILURE(err)) throw Error(where + ": ICU " + type + " unavailable: " + u_errorName(err));
  }
  void normalize(std::string& s) const override {
    bool ascii = true;
    for (unsigned char c : s) ascii = ascii && c < 0x80;
    if (ascii) return;  // every normal form leaves ASCII unchanged
    UErrorCode err = U_ZERO_ERROR;
    std::string out;
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(s.size()));
    n_->normalizeUTF8(0, icu::StringPiece(s.data(), static_cast<int32_t>(s.size())), sink, nullptr,
                      err);
    if (U_FAILURE(err)) throw Error(std::string("unicode normalization failed: ") + u_errorName(err));
    s.swap(out);
  }

 private:
  const icu::Normalizer2* n_ = nullptr;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : p_(std::move(p)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s = p_ + s;
  }

 private:
  std::string p_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(const nlohmann::json& j, const std::string& where) {
    auto p = j.find("pattern");
    if (p == j.end() || !p->is_object()) throw Error(where + ".pattern: missing or not an object");
    if (p->contains("String")) {
      re_ = std::make_unique<Regex>(get_string(*p, "String", where + ".pattern"), true, where);
    } else if (p->contains("Regex")) {
      re_ = std::make_unique<Regex>(get_string(*p, "Regex", where + ".pattern"), false, where);
    } else {
      throw Error(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
    }
    content_ = get_string(j, "content", where);
  }
  void normalize(std::string& s) const override {
    std::vector<std::pair<size_t, size_t>> m;
    re_->find_all(s, m);
    if (m.empty()) return;
    std::string out;
    size_t last = 0;
    for (auto [b, e] : m) {
      out.append(s, last, b - last);
      out.append(content_);
      last = e;
    }
    out.append(s, last, std::string::npos);
    s.swap(out);
  }

 private:
  std::unique_ptr<Regex> re_;
  std::string content_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(std::string& s) const override {
    for (const auto& p : parts_) p->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error(where + ": expected an object or null");
  const std::string type = get_string(j, "type", where);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(type, where);
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(get_string(j, "prepend", where));
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j, where);
  if (type == "Sequence") {
    auto n = j.find("normalizers");
    if (n == j.end() || !n->is_array()) throw Error(where + ".normalizers: missing or not an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < n->size(); ++i) {
      auto p = make_normalizer((*n)[i], where + ".normalizers[" + std::to_string(i) + "]");
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  throw Error(where + ".type '" + type +
              "' not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence)");
}

}  // namespace finmoe::tok
