#pragma once
// Real-text corpora from Debian packages (docs/corpus.md).
//
//   text extraction   HTML, DocBook XML, GNU info and plain-text dumps -> TextBlocks
//   documents         blocks -> paragraphs -> documents of a few hundred to ~2000
//                     characters; exact dedup; a deterministic train/test split
//   bsdgames quiz     the `question:answer` database format ({optional}, a|b, [group])
//   fetch_corpus      `apt-get download` + `dpkg-deb -x` into a cache, convert, write
//                     OUT/{fin,general,zh}/{train,test}.jsonl and OUT/manifest.json
//   build_finance_qa  instruction pairs and a multiple-choice test from the same packages
//
// Characters are Unicode code points throughout. All functions are pure
// except fetch_debian_package, fetch_corpus and build_finance_qa, which touch
// the cache and output directories (not safe to run twice at once on the same
// directories). Errors throw finmoe::Error naming the file (and line), package
// or option.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace finmoe {

// ---------------------------------------------------------------------------
// Text extraction

enum class BlockKind {
  heading,     // h1-h6, DocBook section titles, info headings; `level` 1 = top
  paragraph,
  code,        // pre, programlisting, screen: line breaks kept
  list_item,   // li, DocBook listitem outside a variablelist
  table_row,   // cells joined with " | "
  term,        // dt, DocBook term / glossterm
  definition,  // dd, DocBook listitem of a varlistentry / glossdef
  question,    // DocBook qandaentry/question
  answer,      // DocBook qandaentry/answer
};

struct TextBlock {
  BlockKind kind = BlockKind::paragraph;
  int level = 0;     // heading level (1 = top); 0 for other kinds
  std::string text;  // UTF-8; runs of white space are one space; code keeps its lines
};

// HTML: head, script, style, nav, header, footer, aside, noscript, and
// navigation/index elements of makeinfo and DocBook-XSL output (class header,
// navheader, navfooter, toc, contents, index-*, copiable-anchor) are skipped;
// named (HTML 4 set) and numeric character references are decoded; <br>
// is a line break. Omitted end tags (p, li, dt, dd, td, tr) are tolerated.
std::vector<TextBlock> html_to_blocks(std::string_view html);
// DocBook XML: entities declared in the internal DTD subset are expanded;
// KDE's common entities (&kmymoney;, &kde;, &Ctrl;, ...) have built-in
// values; other undeclared entities (file includes, person names) are
// dropped. Metadata (bookinfo/info, authors, legal notices), index terms,
// remarks and media objects are skipped.
std::vector<TextBlock> docbook_to_blocks(std::string_view xml);
// GNU info: the preamble, node header lines ("File: ..., Node: ..."), menus
// and the tag table are dropped; underlined titles become headings;
// "*note X::" cross references become their text.
std::vector<TextBlock> info_to_blocks(std::string_view info);
// Plain-text dumps of manuals (w3m style: hard-wrapped at the file's fill
// column, body indented): blank-line separated paragraphs whose lines all
// broke because the next word would not fit are unwrapped (no space between
// two CJK characters or inside a broken URL or path); "* " lines are list
// items; "Chapter N." and numbered section lines at column 0 are headings;
// tables of contents and rule lines are dropped; anything else (tables,
// commands) stays code with its lines.
std::vector<TextBlock> plain_text_to_blocks(std::string_view text);

// The paragraphs a document is built from: one per block, except that
// consecutive list items (prefixed "- ") and consecutive table rows are one
// paragraph with a line each. Prose without any letter (code and table rows
// may be all digits), licence
// boilerplate ("Permission is granted to copy ...") and headings directly
// followed by a heading of the same or a higher rank are dropped.
struct Paragraph {
  std::string text;
  bool heading = false;
};
std::vector<Paragraph> blocks_to_paragraphs(const std::vector<TextBlock>& blocks);
// Paragraphs joined with a blank line (the plain text of a converted file).
std::string blocks_to_text(const std::vector<TextBlock>& blocks);

// ---------------------------------------------------------------------------
// Documents and splits

struct DocumentOptions {
  size_t min_chars = 200;      // shorter documents are merged into the previous one or dropped
  size_t target_chars = 1200;  // a document ends at the first paragraph boundary past this
  size_t max_chars = 2000;     // longer paragraphs are cut at sentence ends; a document is
                               // longer only by a merged short remainder (< min_chars)
};

// Groups the paragraphs of ONE source file into documents (paragraphs joined
// by "\n\n"). A heading starts a new document once the current one has
// min_chars; no document ends with a heading; a paragraph longer than
// max_chars is cut at sentence ends (". ", "。", "！", "？"), line breaks or,
// failing those, at a code point boundary.
std::vector<std::string> paragraphs_to_documents(const std::vector<Paragraph>& paragraphs,
                                                 const DocumentOptions& options = {});

// Number of Unicode code points of valid UTF-8 text.
size_t count_chars(std::string_view text);
// Whitespace-separated words, each Han character counting as one word (as word
// processors count East Asian text).
size_t count_words(std::string_view text);
// Han (CJK unified ideograph) code points.
size_t count_han(std::string_view text);

// 64-bit hash of a text (FNV-1a, then a splitmix64 finaliser); stable across
// platforms and runs.
uint64_t text_hash(std::string_view text);
// Whether a document belongs to the test split: its hash, mapped to [0,1),
// is below `test_fraction`. Depends only on the text, so adding or removing
// other documents never moves a document between splits.
bool in_test_split(std::string_view text, double test_fraction);
// Removes exact duplicates, keeping the first; `seen` (hashes of texts kept so
// far, e.g. from other packages) is consulted and updated. Returns the number removed.
size_t remove_duplicates(std::vector<std::string>& documents, std::unordered_set<uint64_t>& seen);

// ---------------------------------------------------------------------------
// bsdgames quiz (quiz(6)): lines of ':'-separated categories, each a pattern
// with `a|b` alternatives, `{optional}` parts and `[a|b]` groups; `\` quotes the
// next character, and a `\` at the end of a line continues it on the next.

struct QuizRecord {
  int line = 0;                       // 1-based line where the record starts
  std::vector<std::string> patterns;  // one per category, as written (escapes kept)
};
// Parses a data or index file. `name` is used in errors ("NAME:LINE: ...").
// Throws for an unbalanced {} or [], a stray } or ], or a trailing escape.
std::vector<QuizRecord> parse_quiz(std::string_view text, const std::string& name);
// The fullest accepted answer: the first alternative of each choice with every
// optional part included ("{J{ohn} }Adams" -> "John Adams").
std::string quiz_canonical(std::string_view pattern);
// Every accepted answer (at most `limit`, in pattern order).
std::vector<std::string> quiz_expansions(std::string_view pattern, size_t limit = 256);
// Whether `answer` is accepted (exact after trimming, as quiz(6) compares).
bool quiz_accepts(std::string_view pattern, std::string_view answer);

// ---------------------------------------------------------------------------
// Debian packages

// $XDG_CACHE_HOME/finmoe/debs, else $HOME/.cache/finmoe/debs.
std::string default_cache_dir();

struct DebianPackage {
  std::string name;
  std::string deb;         // CACHE/NAME_VERSION_ARCH.deb
  std::string root;        // CACHE/extracted/NAME: the package's file system tree
  bool downloaded = false; // false: the .deb was already in the cache
  bool extracted = false;  // false: the extraction in the cache was reused
};
// Makes sure NAME's .deb is in `cache_dir` (`apt-get download NAME`, run in a
// temporary directory and moved in, so a failed download leaves nothing) and
// extracted with `dpkg-deb -x`. A cached NAME_*.deb is reused (the newest if
// several) and so is its extraction. offline: never runs apt-get; a package
// missing from the cache is an error. Throws Error naming the package and the
// command's output when apt-get or dpkg-deb fails or is missing.
DebianPackage fetch_debian_package(const std::string& name, const std::string& cache_dir,
                                   bool offline = false);

// ---------------------------------------------------------------------------
// `finmoe corpus fetch`

// Packages fetch_corpus knows, with their domain: fin | general | zh.
struct CorpusPackageInfo {
  std::string name;
  std::string domain;
  std::string description;
  bool is_default = false;
};
const std::vector<CorpusPackageInfo>& corpus_packages();

struct CorpusOptions {
  std::string out_dir = "corpus";
  std::string cache_dir;               // "" = default_cache_dir()
  std::vector<std::string> packages;   // empty = the default set; "+NAME" entries add to it
  double test_fraction = 0.1;          // per domain, by document hash
  size_t max_package_chars = 700000;   // cap for the large Chinese help (code points)
  DocumentOptions documents;
  bool offline = false;                // use the cache only
  std::string tokenizer_dir;           // exact token counts with this tokenizer; "" = estimate
  std::function<void(const std::string&)> log;  // one line per step (optional)
};

struct CorpusCounts {
  int64_t documents = 0, characters = 0, words = 0, tokens = 0;
};
struct CorpusPackageResult {
  std::string name, domain, deb;
  int64_t files = 0;
  int64_t duplicates = 0;     // documents dropped as exact duplicates
  CorpusCounts total, train, test;
};
struct CorpusResult {
  std::vector<CorpusPackageResult> packages;
  std::vector<std::pair<std::string, CorpusCounts>> domain_train, domain_test;  // per domain
  std::string token_count;    // "tokenizer DIR" or the estimate's rule
  std::string manifest_path;
  int64_t downloads = 0;      // packages downloaded by this run (0 when all were cached)
};
// Fetches, converts, splits and writes OUT/{fin,general,zh}/{train,test}.jsonl
// (lines {"text": ...}) and OUT/manifest.json, each file atomically.
CorpusResult fetch_corpus(const CorpusOptions& options);

// ---------------------------------------------------------------------------
// `finmoe corpus qa`

struct QaItem {
  std::string question, answer;
  std::string source;  // "ucc", "calc-en", "calc-zh", "kmymoney", "gnucash-glossary", ...
  std::string lang;    // "en" | "zh"
  std::string group;   // items of one group share a split (e.g. both directions of a quiz record)
};

// UCC quiz records (section:topic) -> both directions; other subjects -> "What
// is the CAT2 of Q?" with category names from the index. Empty answers skipped.
std::vector<QaItem> quiz_qa_items(const std::string& subject, const std::vector<std::string>& categories,
                                  const std::vector<QuizRecord>& records);
// Definitions in converted manual pages: term/definition pairs (dt/dd,
// varlistentry, glossentry; cross references "See X." skipped) and
// question/answer pairs; `manual` names the manual in the question
// ("In KMyMoney (Accounts), what is \"Loan\"?"); an empty manual asks plainly
// ("What is Loan?"), as for a glossary.
std::vector<QaItem> definition_qa_items(const std::vector<TextBlock>& blocks, const std::string& manual,
                                        const std::string& source);
// Spreadsheet function pages: an all-caps heading followed by its description
// ("NPV" + "Returns the present value ...").
std::vector<QaItem> function_qa_items(const std::vector<TextBlock>& blocks, const std::string& lang,
                                       const std::string& source);

struct McItem {
  std::string question;
  std::vector<std::string> choices;
  int answer = 0;  // index into choices
  std::string source, lang;
};
// One multiple-choice item per test item: its answer plus n_choices-1
// distractors drawn from `pool` items of the same source (distinct answers),
// in an order fixed by the question's hash. Items whose source has too few
// distinct answers are skipped.
std::vector<McItem> make_multiple_choice(const std::vector<QaItem>& test_items,
                                         const std::vector<QaItem>& pool, int n_choices = 4);

struct QaOptions {
  std::string out_dir = "corpus/qa";
  std::string cache_dir;               // "" = default_cache_dir()
  std::vector<std::string> packages;   // empty = the default set; "+gnucash-docs" adds its glossary
  std::vector<std::string> quiz_subjects = {"ucc"};
  double test_fraction = 0.2;          // by group hash
  int n_choices = 4;
  bool offline = false;
  std::function<void(const std::string&)> log;
};
struct QaSourceCounts {
  std::string source;
  int64_t train = 0, test = 0, multiple_choice = 0;
};
struct QaResult {
  std::vector<QaSourceCounts> sources;
  int64_t train = 0, test = 0, multiple_choice = 0;
  std::string out_dir;
};
// Writes OUT/train.jsonl and OUT/test.jsonl (lines {"messages": [{"role":
// "user", ...}, {"role": "assistant", ...}]}), OUT/test_mc.jsonl (lines
// {"question", "choices", "answer", "source", "lang"}) and OUT/manifest.json.
QaResult build_finance_qa(const QaOptions& options);

}  // namespace finmoe
