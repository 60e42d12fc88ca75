// Retrieval heads found by their effect on the output, after "DuoAttention: Efficient Long-Context LLM Inference
// with Retrieval and Streaming Heads". DuoAttention learns one gate per (layer, kv-head) on synthetic passkey text,
// so that the heads whose gate stays high (retrieval heads) keep the whole cache and the others (streaming heads)
// keep only the attention sinks and a recent window, with the output at the answer unchanged. Without training, the
// same question can be asked of each head directly: make that one head streaming, and measure how far the model's
// prediction of the passkey's answer moves from the whole cache's. The heads whose restriction moves it most are
// the retrieval heads.
//
// This file is the host arithmetic of that measure: which part of a head a streaming head reads, the divergence of
// the answer's logits, the per-head accumulation and pick, and the roles file that `heads:file=` reads. The driver
// that prefills the prompts and runs the answer span once per head is src/eval/duo_calibration.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace longctx::kv {

// One head as a streaming head reads it for queries from position q_first on: the first `sink` rows of the first
// page (the attention sinks: a head that was never evicted holds positions 0, 1, ... there) and every page that
// holds a position >= q_first - window (the recent window, widened to whole pages, so it reaches between window and
// window + page_tokens - 1 tokens before q_first; the queries' own keys are always in it). A page that is both
// keeps all its rows. The pages are read where they are (the store is not changed); positions: storage for the
// returned view's positions, which must outlive it.
KvHeadView streaming_head_view(const KvHeadView& head, int32_t sink, int32_t window, int32_t q_first,
                                    std::vector<int32_t>& positions);

// KL(softmax(ref) || softmax(test)) over a vocabulary of n logits, in double: how much the prediction with the
// whole cache (ref) loses when read through the test logits. >= 0, 0 for equal logits.
double logits_kl(const float* ref, const float* test, int32_t n);
// log softmax(logits)[target], in double.
double log_prob(const float* logits, int32_t n, int32_t target);

// How the heads are ranked.
enum class DuoScore {
  Kl,      // mean over the answer rows of KL(whole cache || that head streaming): any change of the prediction
  Answer,  // the drop of the answer's log-probability (summed over its tokens): only what the answer loses
};
const char* duo_score_name(DuoScore s);
DuoScore parse_duo_score(const std::string& s);  // "kl" or "answer"; throws Error otherwise

// Accumulates, per (layer, kv-head), the effect of making that head alone streaming, over the prompts.
class DuoHeadScores {
 public:
  DuoHeadScores(int32_t n_layer, int32_t n_head_kv);

  // One prompt's answer span: ref (n_rows, n_vocab) the logits with the whole cache, test (n_rows, n_vocab) with
  // head (layer, kv_head) streaming; row r predicts targets[r], the answer's r-th token.
  void add(int32_t layer, int32_t kv_head, const float* ref, const float* test, const int32_t* targets,
           int32_t n_rows, int32_t n_vocab);

  // Means over the prompts seen: (n_layer * n_head_kv), layer-major.
  std::vector<double> kl() const;            // of the mean KL over the answer rows
  std::vector<double> answer_drop() const;   // of log p_ref(answer) - log p_test(answer); may be negative
  std::vector<double> scores(DuoScore s) const { return s == DuoScore::Kl ? kl() : answer_drop(); }
  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }

 private:
  int32_t n_layer_, n_head_kv_;
  std::vector<double> kl_, drop_;  // sums
  std::vector<int32_t> n_;         // prompts seen
};

// The `count` heads of highest score (ties to the lower index), as flat indices (layer * n_head_kv + kv_head)
// sorted ascending.
std::vector<int32_t> top_heads(const std::vector<double>& score, int32_t count);

// How a calibration was made, written into the roles file for whoever reads it.
struct DuoCalibrationInfo {
  std::string model, task;
  DuoScore score = DuoScore::Kl;
  int32_t length = 0, n_prompts = 0, sink = 0, window = 0;
  uint64_t seed = 0;
};

// The roles file that `heads:file=` reads (n_layer, n_head_kv, retrieval: [[layer, kv_head], ...]) with both
// scores as (n_layer) rows of (n_head_kv) and the calibration's parameters.
std::string duo_roles_json(const DuoHeadScores& s, const std::vector<int32_t>& retrieval,
                           const DuoCalibrationInfo& info);

}  // namespace longctx::kv
