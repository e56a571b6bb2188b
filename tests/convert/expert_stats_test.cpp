// Routing statistics, load-balance formulas, expert similarity and corpus
// chunking (include/finmoe/analysis.h), each against values computed another way.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <numeric>

#include <torch/torch.h>

#include "../model/test_util.h"
#include "../router_output.h"
#include "finmoe/analysis.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe {
namespace {

// A router output with the given rows of selected experts and weights, seeded random logits.
RouterOutput hand_router(int64_t layer, const std::vector<std::vector<int64_t>>& idx,
                         const std::vector<std::vector<float>>& w, int64_t E, uint64_t seed) {
  torch::manual_seed(seed);
  return test::router_output(layer, idx, w, torch::randn({int64_t(idx.size()), E}));
}

TEST(LoadBalance, UniformLoadIsBalancedWithFullEntropy) {
  const std::vector<double> u(8, 5.0);
  EXPECT_DOUBLE_EQ(load_imbalance(u), 1.0);
  EXPECT_NEAR(normalized_entropy(u), 1.0, 1e-12);
}

TEST(LoadBalance, AllOnOneExpertGivesImbalanceNAndZeroEntropy) {
  std::vector<double> one(6, 0.0);
  one[3] = 42;
  EXPECT_DOUBLE_EQ(load_imbalance(one), 6.0);
  EXPECT_NEAR(normalized_entropy(one), 0.0, 1e-12);
}

TEST(LoadBalance, HalfTheExpertsGivesHalfTheEntropy) {
  // two of four equally loaded: H = ln 2, normalised by ln 4
  const std::vector<double> half = {3, 0, 3, 0};
  EXPECT_DOUBLE_EQ(load_imbalance(half), 2.0);
  EXPECT_NEAR(normalized_entropy(half), 0.5, 1e-12);
  const std::vector<double> skew = {1, 2, 3, 4};
  double h = 0;
  for (double v : skew) h -= v / 10 * std::log(v / 10);
  EXPECT_NEAR(normalized_entropy(skew), h / std::log(4.0), 1e-12);
  EXPECT_DOUBLE_EQ(load_imbalance(skew), 4 / 2.5);
}

TEST(LoadBalance, EmptyOrZeroLoadIsZero) {
  EXPECT_EQ(load_imbalance(std::vector<double>{}), 0.0);
  EXPECT_EQ(load_imbalance(std::vector<double>{0, 0}), 0.0);
  EXPECT_EQ(normalized_entropy(std::vector<double>{0, 0}), 0.0);
}

TEST(RoutingStats, MatchesCountsFromLoopsOverHandMadeRouting) {
  const int64_t E = 4;
  // batch 1: two sequences of 3 tokens, K = 2
  const std::vector<std::vector<int64_t>> idx1 = {{0, 1}, {0, 2}, {3, 0}, {1, 2}, {2, 1}, {0, 3}};
  const std::vector<std::vector<float>> w1 = {{.6f, .4f}, {.7f, .3f}, {.5f, .5f},
                                              {.9f, .1f}, {.8f, .2f}, {.55f, .45f}};
  // batch 2: one sequence of 4 tokens (so sequence-averaging differs from token-pooling)
  const std::vector<std::vector<int64_t>> idx2 = {{0, 1}, {0, 1}, {0, 3}, {0, 2}};
  const std::vector<std::vector<float>> w2 = {{.9f, .1f}, {.6f, .4f}, {.75f, .25f}, {.5f, .5f}};
  auto r1 = hand_router(5, idx1, w1, E, 1);
  auto r2 = hand_router(5, idx2, w2, E, 2);

  RoutingStats stats(E);
  stats.add(r1, 3);
  stats.add(r2, 4);
  const auto res = stats.results();
  ASSERT_EQ(res.size(), 1u);
  const auto& l = res[0];
  EXPECT_EQ(l.layer, 5);
  EXPECT_EQ(l.tokens, 10);
  EXPECT_EQ(l.sequences, 3);
  EXPECT_EQ(l.top_k, 2);

  // the expectation, by plain loops: sequences as (router, first row, length)
  struct Seq {
    const RouterOutput* r;
    const std::vector<std::vector<int64_t>>* idx;
    const std::vector<std::vector<float>>* w;
    int64_t start, len;
  };
  const std::vector<Seq> seqs = {
      {&r1, &idx1, &w1, 0, 3}, {&r1, &idx1, &w1, 3, 3}, {&r2, &idx2, &w2, 0, 4}};
  std::vector<double> load(E), gate(E), prob(E), esft_gate(E), esft_token(E);
  for (const auto& s : seqs) {
    std::vector<double> sg(E), st(E);
    for (int64_t t = s.start; t < s.start + s.len; ++t) {
      const auto lg = s.r->logits[t];
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(lg[e].item<double>());
      for (int64_t e = 0; e < E; ++e) prob[size_t(e)] += std::exp(lg[e].item<double>()) / z;
      for (size_t k = 0; k < 2; ++k) {
        const auto e = size_t((*s.idx)[size_t(t)][k]);
        const double g = (*s.w)[size_t(t)][k];
        load[e] += 1, gate[e] += g, sg[e] += g, st[e] += 0.5;
      }
    }
    for (size_t e = 0; e < size_t(E); ++e) {
      esft_gate[e] += sg[e] / double(s.len) / 3.0;
      esft_token[e] += st[e] / double(s.len) / 3.0;
    }
  }
  const double gsum = std::accumulate(esft_gate.begin(), esft_gate.end(), 0.0);
  for (size_t e = 0; e < size_t(E); ++e) {
    const auto& x = l.experts[e];
    EXPECT_EQ(x.load, int64_t(load[e])) << "expert " << e;
    EXPECT_NEAR(x.selection_ratio, load[e] / 10, 1e-12) << "expert " << e;
    EXPECT_NEAR(x.mean_gate, gate[e] / 10, 1e-6) << "expert " << e;
    EXPECT_NEAR(x.mean_router_prob, prob[e] / 10, 1e-6) << "expert " << e;
    EXPECT_NEAR(x.esft_gate, esft_gate[e], 1e-6) << "expert " << e;
    EXPECT_NEAR(x.esft_token, esft_token[e], 1e-12) << "expert " << e;
    EXPECT_NEAR(x.esft_gate_share, esft_gate[e] / gsum, 1e-6) << "expert " << e;
    // each token picks K distinct experts: token scores already sum to 1
    EXPECT_NEAR(x.esft_token_share, esft_token[e], 1e-12) << "expert " << e;
  }
  // loads (8, 5, 4, 3) of 20 slots, counted by eye from the tables above: imbalance 8/5
  EXPECT_EQ(load, (std::vector<double>{8, 5, 4, 3}));
  EXPECT_NEAR(l.imbalance, 8.0 / 5.0, 1e-12);
  EXPECT_NEAR(l.entropy, normalized_entropy(load), 1e-12);
}

TEST(RoutingStats, KeepsLayersApartAndInOrder) {
  RoutingStats stats(3);
  stats.add(std::vector<RouterOutput>{hand_router(3, {{2}, {2}}, {{1.f}, {1.f}}, 3, 1),
                                      hand_router(1, {{0}, {1}}, {{1.f}, {1.f}}, 3, 2)});
  const auto res = stats.results();
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0].layer, 1);
  EXPECT_EQ(res[1].layer, 3);
  EXPECT_EQ(res[1].experts[2].load, 2);
  EXPECT_DOUBLE_EQ(res[1].imbalance, 3.0);  // everything on one of three experts
  EXPECT_NEAR(res[1].entropy, 0.0, 1e-12);
  EXPECT_EQ(res[0].experts[2].load, 0);
  EXPECT_EQ(stats.tokens(), 2);
}

TEST(RoutingStats, RejectsShapesThatDoNotFit) {
  RoutingStats stats(4);
  auto r = hand_router(0, {{0, 1}, {2, 3}, {1, 2}}, {{.5f, .5f}, {.5f, .5f}, {.5f, .5f}}, 4, 1);
  EXPECT_THROW(stats.add(r, 2), Error);  // 3 rows are not sequences of 2
  auto wide = r;
  wide.logits = torch::randn({3, 5});
  EXPECT_THROW(stats.add(wide), Error);
  auto bad = r;
  bad.indices = r.indices.clone();
  bad.indices[0][0] = 4;
  EXPECT_THROW(stats.add(bad), Error);
  stats.add(r);
  auto k1 = hand_router(0, {{0}, {1}, {2}}, {{1.f}, {1.f}, {1.f}}, 4, 2);
  EXPECT_THROW(stats.add(k1), Error);  // K changed within a layer
}

// ---- similarity -------------------------------------------------------------

std::vector<std::pair<std::string, torch::Tensor>> expert_params(Transformer& m, int64_t layer,
                                                                 int64_t e) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const std::string key = "model.layers." + std::to_string(layer) + ".";
  const std::string ex = ".experts." + std::to_string(e) + ".";
  for (auto& [n, t] : m.named_parameters())
    if (n.starts_with(key) && n.find(ex) != std::string::npos) out.emplace_back(n, t);
  return out;
}

TEST(ExpertSimilarity, CopiedExpertsAreOneAndOrthogonalExpertsZero) {
  const auto cfg = test::tiny_config("mixtral");
  Transformer m(cfg);
  init_random(m, 7);
  const int64_t E = cfg.num_experts;
  torch::NoGradGuard ng;
  // layer 0: copy-upcycled, every expert a copy of expert 0
  auto e0 = expert_params(m, 0, 0);
  ASSERT_EQ(e0.size(), 3u);  // w1, w2, w3
  for (int64_t e = 1; e < E; ++e) {
    auto p = expert_params(m, 0, e);
    for (size_t i = 0; i < p.size(); ++i) p[i].second.copy_(e0[i].second);
  }
  // layer 1: orthogonal by construction, expert e nonzero only at its own entries
  for (int64_t e = 0; e < E; ++e)
    for (auto& [n, t] : expert_params(m, 1, e)) {
      t.zero_();
      t.view({-1}).slice(0, e * 5, e * 5 + 5).fill_(float(e + 1));
    }
  const auto sim = expert_similarity(m);
  ASSERT_EQ(sim.size(), 2u);
  EXPECT_EQ(sim[0].layer, 0);
  EXPECT_NEAR(sim[0].mean, 1.0, 1e-9);
  EXPECT_NEAR(sim[0].min, 1.0, 1e-9);
  EXPECT_NEAR(sim[1].mean, 0.0, 1e-12);
  EXPECT_NEAR(sim[1].max, 0.0, 1e-12);
  ASSERT_EQ(sim[1].matrix.size(), size_t(E * E));
  EXPECT_DOUBLE_EQ(sim[1].matrix[0], 1.0);
  const int64_t per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size;
  EXPECT_EQ(sim[0].params_per_expert, per_expert);
}

TEST(ExpertSimilarity, RandomExpertsMatchCosineOfConcatenatedWeights) {
  for (const char* type : {"qwen2_moe", "finer_moe"}) {
    const auto cfg = test::tiny_config(type);
    Transformer m(cfg);
    init_random(m, 3);
    const auto sim = expert_similarity(m);
    ASSERT_FALSE(sim.empty()) << type;
    for (const auto& ls : sim) {
      const int64_t E = ls.num_experts;
      auto flat = [&](int64_t e) {
        std::vector<torch::Tensor> parts;
        for (auto& [n, t] : expert_params(m, ls.layer, e)) parts.push_back(t.detach().flatten());
        return torch::cat(parts).to(torch::kFloat64);
      };
      double sum = 0;
      for (int64_t i = 0; i < E; ++i)
        for (int64_t j = i + 1; j < E; ++j) {
          const double c = torch::cosine_similarity(flat(i), flat(j), 0).item<double>();
          EXPECT_NEAR(ls.matrix[size_t(i * E + j)], c, 1e-9) << type << " layer " << ls.layer;
          EXPECT_NEAR(ls.matrix[size_t(j * E + i)], c, 1e-9);
          sum += c;
        }
      EXPECT_NEAR(ls.mean, sum / double(E * (E - 1) / 2), 1e-9) << type;
    }
  }
}

// ---- corpus and routing over a model ------------------------------------------

std::string tok_dir() { return std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3"; }

TEST(Corpus, JsonlDocumentsAreConcatenatedAndChunked) {
  test::TempDir d;
  const auto tok = Tokenizer::from_dir(tok_dir());
  const std::vector<std::string> texts = {"Revenue rose 12% year over year.",
                                          "The board approved a dividend of $0.42 per share.",
                                          "Net interest margin narrowed."};
  std::ofstream(d.path / "c.jsonl")
      << nlohmann::json{{"text", texts[0]}}.dump() << "\n\n"
      << nlohmann::json{{"text", texts[1]}}.dump() << "\n"
      << nlohmann::json{{"messages", {{{"role", "user"}, {"content", texts[2]}}}}}.dump() << "\n";
  std::vector<int32_t> want, want_doc;
  for (size_t i = 0; i < 3; ++i) {
    const std::string text = i < 2 ? texts[i] : render_chat(tok, {{"user", texts[2]}}, false);
    for (int32_t id : tok.encode(text)) want.push_back(id), want_doc.push_back(int32_t(i));
  }
  const auto chunks =
      tokenize_corpus((d.path / "c.jsonl").string(), tok, {.seq_len = 7, .max_tokens = 0});
  ASSERT_EQ(chunks.size(), (want.size() + 6) / 7);
  std::vector<int32_t> got;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const auto& ch = chunks[c];
    ASSERT_EQ(ch.tokens.size(), ch.document_ids.size());
    if (c + 1 < chunks.size()) {
      EXPECT_EQ(ch.tokens.size(), 7u);
    }
    for (size_t i = 0; i < ch.tokens.size(); ++i) {
      // document ids restart at 0 in each chunk but follow the documents
      EXPECT_EQ(ch.document_ids[i], want_doc[got.size()] - want_doc[c * 7]);
      got.push_back(ch.tokens[i]);
    }
  }
  EXPECT_EQ(got, want);

  const auto capped =
      tokenize_corpus((d.path / "c.jsonl").string(), tok, {.seq_len = 4, .max_tokens = 10});
  ASSERT_EQ(capped.size(), 3u);
  EXPECT_EQ(capped.back().tokens.size(), 2u);
}

TEST(Corpus, PlainTextIsOneDocumentAndErrorsNameTheFile) {
  test::TempDir d;
  const auto tok = Tokenizer::from_dir(tok_dir());
  const std::string text = "Line one of the filing.\nLine two, with numbers 2024.\n";
  std::ofstream(d.path / "c.txt") << text;
  const auto chunks = tokenize_corpus((d.path / "c.txt").string(), tok, {.seq_len = 1000});
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].tokens, tok.encode(text));
  for (int32_t doc : chunks[0].document_ids) EXPECT_EQ(doc, 0);

  const std::string missing = (d.path / "missing.txt").string();
  try {
    tokenize_corpus(missing, tok);
    FAIL() << "no error for a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  std::ofstream(d.path / "bad.jsonl") << "{\"text\": \"ok\"}\n{\"txt\": 1}\n";
  try {
    tokenize_corpus((d.path / "bad.jsonl").string(), tok);
    FAIL() << "no error for a line without text";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
}

TEST(CollectRouting, CountsEveryTokenOnceAndMatchesADirectForward) {
  const auto cfg = test::tiny_config("qwen2_moe");
  Transformer m(cfg);
  init_random(m, 11);
  std::vector<TokenChunk> chunks;
  torch::manual_seed(5);
  for (int64_t len : {16, 16, 16, 9}) {
    auto ids = torch::randint(cfg.vocab_size, {len}, torch::kInt64);
    TokenChunk c;
    for (int64_t i = 0; i < len; ++i) {
      c.tokens.push_back(int32_t(ids[i].item<int64_t>()));
      c.document_ids.push_back(i < len / 2 ? 0 : 1);  // two documents per chunk
    }
    chunks.push_back(c);
  }
  int64_t last = 0;
  const auto stats = collect_routing(m, chunks, [&](int64_t done) { last = done; });
  EXPECT_EQ(last, 57);
  const auto res = stats.results();
  // qwen2_moe tiny: layer 0 dense (mlp_only_layers), layer 1 MoE
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0].layer, 1);
  EXPECT_EQ(res[0].tokens, 57);
  EXPECT_EQ(res[0].sequences, 4);
  double load = 0;
  for (const auto& x : res[0].experts) load += double(x.load);
  EXPECT_EQ(load, double(57 * cfg.num_experts_per_tok));

  // the same loads from one forward per chunk, counted here
  std::vector<int64_t> want(size_t(cfg.num_experts), 0);
  torch::NoGradGuard ng;
  for (const auto& c : chunks) {
    std::vector<RouterOutput> routers;
    ForwardOptions fo;
    fo.router_outputs = &routers;
    const auto L = int64_t(c.tokens.size());
    fo.document_ids =
        torch::tensor(std::vector<int64_t>(c.document_ids.begin(), c.document_ids.end()))
            .view({1, L});
    m.forward(torch::tensor(std::vector<int64_t>(c.tokens.begin(), c.tokens.end())).view({1, L}),
              fo);
    ASSERT_EQ(routers.size(), 1u);
    auto idx = routers[0].indices.flatten();
    for (int64_t i = 0; i < idx.numel(); ++i) ++want[size_t(idx[i].item<int64_t>())];
  }
  for (size_t e = 0; e < want.size(); ++e)
    EXPECT_EQ(res[0].experts[e].load, want[e]) << "expert " << e;
}

TEST(CollectRouting, DenseModelIsRejectedNamingItsType) {
  const auto cfg = test::tiny_config("llama");
  Transformer m(cfg);
  try {
    collect_routing(m, {});
    FAIL() << "no error for a dense model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace finmoe
