#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>

#include "backend/cpu/kv_page_codec.h"
#include "core/error.h"
#include "engine/stop_filter.h"

namespace longctx {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eog: return "end of generation token";
    case StopReason::StopString: return "stop string";
    case StopReason::Length: return "length limit (-n)";
    case StopReason::ContextFull: return "context full (--ctx)";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

std::string logits_hash(const float* logits, int64_t n) {
  // FNV-1a over the bytes: any change in any logit shows.
  uint64_t h = 1469598103934665603ull;
  const auto* b = reinterpret_cast<const uint8_t*>(logits);
  for (int64_t i = 0; i < n * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf, 8);
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Generator::Generator(const Model& model, const Tokenizer& tok, ThreadPool& pool, kv::KvPolicy& policy,
                     const GenerateParams& params)
    : model_(model), tok_(tok), policy_(policy), params_(params), forward_(model, pool, std::max(1, params.n_batch)) {
  const ModelConfig& c = model.config();
  if (params.n_ctx <= 0) fail("--ctx must be positive (got {})", params.n_ctx);
  if (params.n_batch <= 0) fail("--batch must be positive (got {})", params.n_batch);
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  geo.format = policy.page_format();
  geo.sealed_format = policy.sealed_format();
  geo.n_recent_full_precision = policy.n_recent_full_precision();
  geo.key_summaries = policy.wants_key_summaries();
  if (policy.page_tokens() > 0) geo.page_tokens = policy.page_tokens();
  // The full cache of n_ctx tokens in the open format, plus a slab of every format per head for the
  // transitions between them: the most it may hold.
  // KVzip's reconstruction pass (kv::KvReconstruction) appends up to a chunk and its instruction for a while.
  const kv::KvReconstruction rec = policy.reconstruction();
  const size_t n_tokens_most = static_cast<size_t>(params.n_ctx) + (rec.chunk > 0 ? rec.chunk + rec.n_overlap + 256 : 0);
  const size_t pages_per_head = (n_tokens_most + geo.page_tokens - 1) / geo.page_tokens;
  const size_t max_bytes = (pages_per_head + 2 * 64) * c.n_layer * c.n_head_kv *
                           cpu::kv_page_bytes(geo.format, geo.page_tokens, geo.head_dim);
  pages_ = std::make_unique<kv::KvPagePool>(geo.page_tokens, geo.head_dim, max_bytes);
  seq_ = std::make_unique<kv::KvSequence>(geo, *pages_);
}

void Generator::decode_step(int32_t id, int32_t pos, std::vector<float>& logits) {
  const ModelConfig& c = model_.config();
  if (policy_.wants_decode_scores()) {
    scores_.reset(c.n_layer, c.n_head_kv, params_.n_ctx, seq_->n_tokens_max() + 1);
    scores_.first_pos = pos;
  } else {
    scores_.first_pos = INT_MAX;
  }
  // Decode reads what the policy's read filter (Quest) chooses; prefill read everything.
  forward_.run(*seq_, &id, &pos, 1, {0}, logits.data(), &scores_, policy_.positions(), policy_.read_filter());
  note_peak();
  policy_.after_decode_step(*seq_, scores_);
  kv_expire_window(c, *seq_, policy_, pos + 1);
}

bool Generator::context_has_room(int32_t pos) const {
  if (policy_.positions() == kv::KvPositions::InCache) return seq_->n_tokens_max() < params_.n_ctx;
  return pos < params_.n_ctx;
}

void Generator::note_peak() { peak_bytes_ = std::max(peak_bytes_, seq_->bytes().total()); }

void Generator::prefill(const std::vector<int32_t>& prompt, const ProgressFn& on_progress,
                        const std::vector<int32_t>& logit_positions, std::vector<float>& logits, bool apply_policy,
                        int32_t n_compressed) {
  const int32_t n = static_cast<int32_t>(prompt.size());
  const ModelConfig& c = model_.config();
  const int32_t n_vocab = c.n_vocab;
  if (n == 0) fail("the prompt is empty");
  if (n > params_.n_ctx)
    fail("the prompt has {} tokens, more than the context of {} (--ctx); raise --ctx or shorten the prompt", n,
         params_.n_ctx);
  // The policy compresses the first m tokens; the rest are read after it, over the compressed cache.
  const int32_t m = n_compressed > 0 ? n_compressed : n;
  if (m > n) fail("internal: {} tokens to compress of a prompt of {}", m, n);
  seq_->clear();
  policy_.reset();
  seq_->set_auto_seal(false);  // token selection runs on unpacked pages; packing follows it
  peak_bytes_ = 0;
  scores_.reset(c.n_layer, c.n_head_kv, params_.n_ctx, params_.n_ctx);
  scores_.reduce = cpu::ScoreReduce::Sum;
  scores_.first_pos = apply_policy ? policy_.prefill_score_from(m) : INT_MAX;
  scores_.queries.first_pos = apply_policy ? policy_.prefill_query_stats_from(m) : INT_MAX;
  if (scores_.queries.wanted()) scores_.queries.reset(c.n_layer, c.n_head, c.head_dim);
  logits.assign(logit_positions.size() * static_cast<size_t>(n_vocab), 0.0f);
  std::vector<int32_t> positions(static_cast<size_t>(params_.n_batch));
  std::vector<float> chunk_logits;
  // Runs prompt tokens [start, start + len) and copies out the logits asked for among them.
  auto run_chunk = [&](int32_t start, int32_t len) {
    for (int32_t i = 0; i < len; ++i) positions[static_cast<size_t>(i)] = start + i;
    std::vector<int32_t> rows;
    std::vector<size_t> dest;
    for (size_t j = 0; j < logit_positions.size(); ++j)
      if (logit_positions[j] >= start && logit_positions[j] < start + len) {
        rows.push_back(logit_positions[j] - start);
        dest.push_back(j);
      }
    chunk_logits.resize(rows.size() * static_cast<size_t>(n_vocab));
    forward_.run(*seq_, prompt.data() + start, positions.data(), len, rows, chunk_logits.data(), &scores_);
    note_peak();
    for (size_t r = 0; r < rows.size(); ++r)
      std::memcpy(logits.data() + dest[r] * n_vocab, chunk_logits.data() + r * n_vocab, n_vocab * sizeof(float));
  };
  for (int32_t start = 0; start < m; start += params_.n_batch) {
    const int32_t len = std::min(params_.n_batch, m - start);
    const bool compress_now = apply_policy && params_.prefill_compress && start + len < m;
    if (compress_now) {
      // Each chunk is scored as if the prompt ended with it.
      scores_.reset(c.n_layer, c.n_head_kv, params_.n_ctx, seq_->n_tokens_max() + len);
      scores_.first_pos = policy_.prefill_score_from(start + len);
    } else if (apply_policy && params_.prefill_compress) {
      scores_.reset(c.n_layer, c.n_head_kv, params_.n_ctx, seq_->n_tokens_max() + len);
      scores_.first_pos = policy_.prefill_score_from(m);
    }
    run_chunk(start, len);
    if (compress_now) policy_.after_prefill_chunk(*seq_, scores_);
    // Sliding-window expiry renumbers slots, so it waits while scores for the policy are still being gathered.
    const bool scores_pending = scores_.wanted() && start + len > scores_.first_pos && !compress_now;
    if (!scores_pending) kv_expire_window(c, *seq_, policy_, start + len);
    if (on_progress) on_progress(start + len, n);
  }
  if (apply_policy) {
    if (policy_.reconstruction().chunk > 0) reconstruct(prompt, m);
    policy_.after_prefill(*seq_, scores_);
  }
  kv_expire_window(c, *seq_, policy_, m);
  // The rest of the prompt (a question asked after the context was compressed): read, never scored.
  scores_.first_pos = INT_MAX;
  scores_.queries.first_pos = INT_MAX;
  for (int32_t start = m; start < n; start += params_.n_batch) {
    const int32_t len = std::min(params_.n_batch, n - start);
    run_chunk(start, len);
    kv_expire_window(c, *seq_, policy_, start + len);
    if (on_progress) on_progress(start + len, n);
  }
  seq_->seal_full_pages();
  seq_->set_auto_seal(true);
}

void Generator::reconstruct(const std::vector<int32_t>& prompt, int32_t m) {
  const ModelConfig& c = model_.config();
  const kv::KvReconstruction rec = policy_.reconstruction();
  const std::vector<int32_t> first = tok_.encode(rec.first_instruction, false, false);
  const std::vector<int32_t> next = tok_.encode(rec.next_instruction, false, false);
  // The text is repeated, not the bos that starts it.
  const int32_t from = (m > 1 && prompt[0] == tok_.bos()) ? 1 : 0;
  const int32_t n_extra_max = static_cast<int32_t>(std::max(first.size(), next.size() + rec.n_overlap)) + rec.chunk;
  // Every reconstruction query votes, each slot keeping the most any of them paid it.
  scores_.reset(c.n_layer, c.n_head_kv, m + n_extra_max, m + n_extra_max);
  scores_.first_pos = m;
  scores_.reduce = cpu::ScoreReduce::Max;
  scores_.queries.first_pos = INT_MAX;
  std::vector<int32_t> ids, positions;
  std::vector<int32_t> gone;
  for (int32_t c0 = from; c0 < m; c0 += rec.chunk) {
    const int32_t c1 = std::min(m, c0 + rec.chunk);
    if (c0 == from) {
      ids = first;
    } else {
      ids = next;
      ids.insert(ids.end(), prompt.begin() + std::max(from, c0 - rec.n_overlap), prompt.begin() + c0);
    }
    ids.insert(ids.end(), prompt.begin() + c0, prompt.begin() + c1);
    const int32_t n_ids = static_cast<int32_t>(ids.size());
    positions.resize(static_cast<size_t>(n_ids));
    for (int32_t i = 0; i < n_ids; ++i) positions[static_cast<size_t>(i)] = m + i;
    for (int32_t s0 = 0; s0 < n_ids; s0 += params_.n_batch) {
      const int32_t len = std::min(params_.n_batch, n_ids - s0);
      forward_.run(*seq_, ids.data() + s0, positions.data() + s0, len, {}, nullptr, &scores_);
      note_peak();
    }
    // The reconstruction's own tokens leave the cache: they sit after every prompt slot (positions >= m).
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g) {
        const kv::KvHeadCache& h = seq_->head(l, g);
        const int32_t n_before = h.n_tokens();
        gone.clear();
        for (int32_t s = n_before; s-- > 0 && h.positions[static_cast<size_t>(s)] >= m;) gone.push_back(s);
        std::reverse(gone.begin(), gone.end());
        seq_->remove_slots(l, g, gone);
        policy_.on_slots_removed(l, g, n_before, gone);
      }
  }
}

std::vector<float> Generator::prompt_logits(const std::vector<int32_t>& prompt, const std::vector<int32_t>& positions) {
  for (int32_t p : positions)
    if (p < 0 || p >= static_cast<int32_t>(prompt.size())) fail("logit position {} is outside the prompt", p);
  std::vector<float> logits;
  prefill(prompt, nullptr, positions, logits, /*apply_policy=*/false);
  return logits;
}

ScoreStats Generator::score_continuation(const std::vector<int32_t>& prefix, const std::vector<int32_t>& continuation,
                                         const ProgressFn& on_progress, const ScoreStepFn& on_step) {
  ScoreStats st;
  const ModelConfig& c = model_.config();
  const int32_t n_vocab = c.n_vocab;
  const int32_t n_prefix = static_cast<int32_t>(prefix.size());
  const bool in_cache = policy_.positions() == kv::KvPositions::InCache;
  if (!in_cache && n_prefix + static_cast<int64_t>(continuation.size()) > params_.n_ctx)
    fail("prefix and continuation have {} tokens, more than the context of {} (only a policy of positions within "
         "the cache, --kv streaming, goes past it)",
         n_prefix + continuation.size(), params_.n_ctx);
  std::vector<float> logits;  // (n_vocab): the prediction of the next token
  auto t0 = std::chrono::steady_clock::now();
  prefill(prefix, on_progress, {n_prefix - 1}, logits, /*apply_policy=*/true);
  st.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  int32_t pos = n_prefix;
  for (size_t i = 0; i < continuation.size(); ++i) {
    const int32_t id = continuation[i];
    if (id < 0 || id >= n_vocab) fail("continuation token {} is outside the vocabulary", id);
    // log softmax in double: a sum over thousands of tokens must not drift.
    const float mx = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (float l : logits) z += std::exp(static_cast<double>(l - mx));
    const double nll = std::log(z) - static_cast<double>(logits[static_cast<size_t>(id)] - mx);
    st.nll_sum += nll;
    ++st.n_scored;
    if (on_step) {
      ScoreStep step;
      step.index = static_cast<int32_t>(i);
      step.nll = nll;
      step.logits = logits.data();
      step.kv_bytes = seq_->bytes();
      step.kv_pool_bytes = pages_->bytes_reserved();
      step.n_cached = seq_->n_tokens_max();
      on_step(step);
    }
    if (i + 1 == continuation.size()) break;  // the last token's prediction is not needed
    if (!context_has_room(pos))
      fail("the cache holds {} tokens, the whole context of {}: positions within the cache cannot go further; give "
           "the streaming policy a budget below --ctx",
           seq_->n_tokens_max(), params_.n_ctx);
    decode_step(id, pos, logits);
    ++pos;
  }
  st.decode_seconds = seconds_since(t0);
  st.kv_bytes = seq_->bytes();
  st.kv_full_f16_bytes = seq_->full_f16_bytes(pos);  // every token seen, kept or evicted: the uncompressed cache
  st.kv_pool_bytes = pages_->bytes_reserved();
  st.kv_pool_peak_bytes = pages_->bytes_reserved_peak();
  return st;
}

GenerateStats Generator::generate(const std::vector<int32_t>& prompt, const TextFn& on_text,
                                  const ProgressFn& on_progress, int32_t n_compressed) {
  GenerateStats st;
  const int32_t n_vocab = model_.config().n_vocab;
  st.n_prompt = static_cast<int32_t>(prompt.size());
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  prefill(prompt, on_progress, {st.n_prompt - 1}, logits, /*apply_policy=*/true, n_compressed);
  st.prefill_seconds = seconds_since(t0);

  Sampler sampler(params_.sampling);
  for (int32_t t : prompt) sampler.accept(t);
  StopFilter filter(params_.stop);
  bool keep_going = true;
  int32_t pos = st.n_prompt;
  st.stop_reason = StopReason::Length;
  t0 = std::chrono::steady_clock::now();
  while (true) {
    if (st.n_generated >= params_.n_predict) {
      st.stop_reason = StopReason::Length;
      break;
    }
    const int32_t id = sampler.sample(logits.data(), n_vocab);
    sampler.accept(id);
    if (!params_.ignore_eog && tok_.is_eog(id)) {
      st.stop_reason = StopReason::Eog;
      break;
    }
    st.tokens.push_back(id);
    ++st.n_generated;
    if (params_.on_token && !params_.on_token(id, logits.data())) {
      st.stop_reason = StopReason::Cancelled;
      break;
    }
    if (filter.push(tok_.token_bytes(id), on_text, keep_going)) {
      st.stop_reason = StopReason::StopString;
      break;
    }
    if (!keep_going) {
      st.stop_reason = StopReason::Cancelled;
      break;
    }
    if (st.n_generated >= params_.n_predict) continue;  // no need to run the last token
    if (!context_has_room(pos)) {
      st.stop_reason = StopReason::ContextFull;
      break;
    }
    decode_step(id, pos, logits);
    ++pos;
  }
  if (st.stop_reason != StopReason::StopString) filter.flush(on_text);
  st.decode_seconds = seconds_since(t0);
  st.kv_bytes = seq_->bytes();
  st.kv_full_f16_bytes = seq_->full_f16_bytes(pos);  // every token seen, kept or evicted: the uncompressed cache
  st.kv_pool_bytes = pages_->bytes_reserved();
  st.kv_pool_peak_bytes = pages_->bytes_reserved_peak();
  st.kv_peak_bytes = peak_bytes_;
  st.logits_hash = logits_hash(logits.data(), n_vocab);
  return st;
}

}  // namespace longctx
