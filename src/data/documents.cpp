// Paragraphs, documents, counts, hashing, the train/test split and dedup.
#include <algorithm>
#include <array>

#include "data/markup.h"
#include "finmoe/corpus.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
  if (c >= 0xC0 && c < 0x2000 && c != 0xD7 && c != 0xF7) return true;  // Latin, Greek, Cyrillic, ...
  return data::is_han(c) || (c >= 0x3040 && c <= 0x30FF) || (c >= 0xAC00 && c <= 0xD7AF);
}

bool has_letter(std::string_view s) {
  for (size_t i = 0; i < s.size();)
    if (is_letter(tok::utf8_next(s, i))) return true;
  return false;
}

// Licence and permission notices repeated across manuals.
bool is_boilerplate(std::string_view s) {
  static constexpr std::array<std::string_view, 8> markers = {
      "Permission is granted to copy",
      "Permission is granted to make and distribute",
      "This program is free software",
      "GNU Free Documentation License, Version",
      "Redistribution and use in source and binary forms",
      "THIS SOFTWARE IS PROVIDED BY",
      "This documentation is licensed under",
      "This program is distributed in the hope"};
  for (auto m : markers)
    if (s.find(m) != std::string_view::npos) return true;
  return false;
}

// Byte offset just past the first `n` code points of s (s.size() if fewer).
size_t offset_of_char(std::string_view s, size_t n) {
  size_t i = 0;
  while (n-- > 0 && i < s.size()) i += tok::utf8_char_len(static_cast<unsigned char>(s[i]));
  return std::min(i, s.size());
}

// Cuts a paragraph into pieces of at most max_chars code points, preferring
// sentence ends, then line breaks, then spaces.
std::vector<std::string> split_long(const std::string& text, size_t max_chars) {
  std::vector<std::string> out;
  std::string_view rest = text;
  while (count_chars(rest) > max_chars) {
    const size_t limit = offset_of_char(rest, max_chars);
    const size_t floor = offset_of_char(rest, max_chars / 3);
    const std::string_view head = rest.substr(0, limit);
    size_t cut = std::string_view::npos;
    for (std::string_view end : {". ", "? ", "! ", "\u3002", "\uff01", "\uff1f", "; ", "\uff1b"}) {
      size_t p = head.rfind(end);
      if (p == std::string_view::npos) continue;
      // ". " keeps the full stop and drops the space; "。" is kept whole.
      const size_t c = end.size() == 2 ? p + 1 : p + end.size();
      if (c > floor && (cut == std::string_view::npos || c > cut)) cut = c;
    }
    if (cut == std::string_view::npos) {
      size_t p = head.rfind('\n');
      if (p != std::string_view::npos && p > floor) cut = p;
    }
    if (cut == std::string_view::npos) {
      size_t p = head.rfind(' ');
      if (p != std::string_view::npos && p > floor) cut = p;
    }
    if (cut == std::string_view::npos || cut == 0) cut = limit;
    std::string piece(rest.substr(0, cut));
    while (!piece.empty() && (piece.back() == ' ' || piece.back() == '\n')) piece.pop_back();
    if (!piece.empty()) out.push_back(std::move(piece));
    rest = rest.substr(cut);
    while (!rest.empty() && (rest[0] == ' ' || rest[0] == '\n')) rest.remove_prefix(1);
  }
  if (!rest.empty()) out.emplace_back(rest);
  return out;
}

}  // namespace

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

size_t count_han(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size();) n += data::is_han(tok::utf8_next(s, i));
  return n;
}

size_t count_words(std::string_view s) {
  size_t n = 0;
  bool in_word = false;
  for (size_t i = 0; i < s.size();) {
    const char32_t c = tok::utf8_next(s, i);
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == 0x3000) {
      in_word = false;
    } else if (data::is_han(c)) {
      ++n;
      in_word = false;
    } else if (!in_word) {
      ++n;
      in_word = true;
    }
  }
  return n;
}

uint64_t text_hash(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  // splitmix64 finaliser: FNV's low bits alone are poorly mixed.
  h += 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

bool in_test_split(std::string_view text, double test_fraction) {
  return double(text_hash(text) >> 11) * 0x1.0p-53 < test_fraction;
}

size_t remove_duplicates(std::vector<std::string>& documents, std::unordered_set<uint64_t>& seen) {
  const size_t before = documents.size();
  std::vector<std::string> kept;
  kept.reserve(documents.size());
  for (auto& d : documents)
    if (seen.insert(text_hash(d)).second) kept.push_back(std::move(d));
  documents = std::move(kept);
  return before - documents.size();
}

std::vector<Paragraph> blocks_to_paragraphs(const std::vector<TextBlock>& blocks) {
  std::vector<Paragraph> out;
  BlockKind prev = BlockKind::heading;
  bool merging = false;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const TextBlock& b = blocks[k];
    // A heading directly followed by one of the same or a higher rank heads
    // nothing (e.g. "Table of Contents" once the contents are skipped).
    if (b.kind == BlockKind::heading && k + 1 < blocks.size() && blocks[k + 1].kind == BlockKind::heading &&
        blocks[k + 1].level <= b.level)
      continue;
    const bool prose = b.kind != BlockKind::code && b.kind != BlockKind::table_row;
    if ((prose && !has_letter(b.text)) || is_boilerplate(b.text)) {
      merging = false;
      continue;
    }
    const bool item = b.kind == BlockKind::list_item, row = b.kind == BlockKind::table_row;
    std::string line = item ? "- " + b.text : b.text;
    if ((item || row) && merging && prev == b.kind) {
      out.back().text += "\n" + line;
    } else {
      out.push_back({std::move(line), b.kind == BlockKind::heading});
    }
    merging = item || row;
    prev = b.kind;
  }
  return out;
}

std::string blocks_to_text(const std::vector<TextBlock>& blocks) {
  std::string out;
  for (const auto& p : blocks_to_paragraphs(blocks)) {
    if (!out.empty()) out += "\n\n";
    out += p.text;
  }
  return out;
}

std::vector<std::string> paragraphs_to_documents(const std::vector<Paragraph>& paragraphs,
                                                 const DocumentOptions& o) {
  struct Part {
    std::string text;
    bool heading;
    size_t chars;
  };
  std::vector<std::vector<Part>> docs;
  std::vector<Part> cur;
  size_t cur_chars = 0;
  auto has_body = [](const std::vector<Part>& parts) {
    return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return !p.heading; });
  };
  // Ends the current document; trailing headings move on to the next one.
  auto emit = [&] {
    std::vector<Part> carry;
    while (!cur.empty() && cur.back().heading) {
      carry.insert(carry.begin(), std::move(cur.back()));
      cur.pop_back();
    }
    if (has_body(cur)) docs.push_back(std::move(cur));
    cur = std::move(carry);
    cur_chars = 0;
    for (const auto& p : cur) cur_chars += p.chars + 2;
  };
  auto add = [&](Part p) {
    cur_chars += p.chars + (cur.empty() ? 0 : 2);
    cur.push_back(std::move(p));
  };
  for (const auto& para : paragraphs) {
    if (para.heading) {
      if (cur_chars >= o.min_chars && has_body(cur)) emit();
      add({para.text, true, count_chars(para.text)});
      continue;
    }
    for (auto& piece : split_long(para.text, std::max<size_t>(o.max_chars, 1))) {
      const size_t n = count_chars(piece);
      if (has_body(cur) && cur_chars + 2 + n > o.max_chars) emit();
      add({std::move(piece), false, n});
      if (cur_chars >= o.target_chars) emit();
    }
  }
  if (has_body(cur)) docs.push_back(std::move(cur));

  auto joined = [](const std::vector<Part>& parts) {
    std::string s;
    for (const auto& p : parts) {
      if (!s.empty()) s += "\n\n";
      s += p.text;
    }
    return s;
  };
  std::vector<std::string> out;
  for (size_t k = 0; k < docs.size(); ++k) {
    std::string d = joined(docs[k]);
    const size_t n = count_chars(d);
    if (n >= o.min_chars) {
      out.push_back(std::move(d));
      continue;
    }
    // Too short: merged into the previous document when that stays within
    // max + min characters, otherwise into the next one, otherwise dropped.
    if (!out.empty() && count_chars(out.back()) + 2 + n <= o.max_chars + o.min_chars) {
      out.back() += "\n\n" + d;
    } else if (k + 1 < docs.size()) {
      docs[k + 1].insert(docs[k + 1].begin(), Part{d, false, n});
    }
  }
  return out;
}

}  // namespace finmoe
