// Continuous batching over one engine session (scheduler.h).
#include "engine/scheduler.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <span>
#include <unordered_map>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/stop_filter.h"
#include "kv/kv_store.h"

namespace longctx {

namespace {
// Thrown out of a prefill's progress callback when its request is cancelled between chunks.
struct PrefillCancelled {};
}  // namespace

struct Scheduler::Request {
  ScheduledRequest in;
  SequenceId seq = -1;  // while running (the session owns its policy)
  bool needs_prefill = true;
  bool done = false;
  // What the next prefill runs: the prompt, or after a preemption the prompt and every token generated.
  std::vector<int32_t> to_prefill;
  int32_t n_reused = 0;       // of to_prefill, shared from a cached sequence
  int32_t n_shareable = 0;    // of to_prefill, what its policy leaves as written until the prompt's end
  std::vector<int32_t> ran;   // tokens whose K/V the sequence holds, by position
  std::vector<float> logits;  // (n_vocab) the prediction of the next token
  int32_t next_token = -1;    // sampled and streamed, fed at the next decode step
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StopFilter> filter;  // reads in.stop
  RequestOutcome out;
  bool cancelled() { return in.cancelled && in.cancelled(); }
};

// A full cache kept for prefix reuse: a finished request's, or a prompt's prefix as its prefill passed it. Never
// written again: requests share its pages.
struct Scheduler::Cached {
  SequenceId seq = -1;
  std::vector<int32_t> tokens;  // by position
};

int32_t Scheduler::shareable_prefix(const Request& r, const kv::KvPolicy& p, int32_t n) const {
  if (!opts_.prefix_reuse || model_.config().sliding_window > 0 || r.in.prefill_compress ||
      p.reconstruction().chunk > 0 || (p.page_tokens() > 0 && p.page_tokens() != kv::KvGeometry{}.page_tokens))
    return 0;
  // The last token's logits are needed, and what the policy scores or gathers statistics from must run.
  return std::max(0, std::min({n - 1, p.prefill_score_from(n), p.prefill_query_stats_from(n)}));
}

void Scheduler::keep_cached(SequenceId seq, std::vector<int32_t> tokens) {
  // A cache whose tokens begin another's is covered by it (their pages are shared anyway).
  std::erase_if(cached_, [&](const std::unique_ptr<Cached>& c) {
    const bool covered = session_.sequence(c->seq).geometry().format == session_.sequence(seq).geometry().format &&
                         c->tokens.size() <= tokens.size() &&
                         std::equal(c->tokens.begin(), c->tokens.end(), tokens.begin());
    if (covered) session_.remove_sequence(c->seq);
    return covered;
  });
  auto c = std::make_unique<Cached>();
  c->seq = seq;
  c->tokens = std::move(tokens);
  cached_.push_back(std::move(c));
  // At most two for each request that may run (its prompt's prefix and its whole sequence): older ones go first.
  while (static_cast<int32_t>(cached_.size()) > 2 * opts_.session.n_seq_max) {
    session_.remove_sequence(cached_.front()->seq);
    cached_.erase(cached_.begin());
  }
}

Scheduler::Scheduler(const Model& model, const Tokenizer& tok, ThreadPool& pool, const SchedulerOptions& opts)
    : model_(model), tok_(tok), opts_(opts), session_(model, pool, opts.session, &tok) {}

Scheduler::~Scheduler() = default;

void Scheduler::add(ScheduledRequest r) {
  auto req = std::make_unique<Request>();
  req->in = std::move(r);
  req->to_prefill = req->in.prompt;
  req->out.n_prompt = static_cast<int32_t>(req->in.prompt.size());
  waiting_.push_back(std::move(req));
}

size_t Scheduler::free_bytes() const {
  if (session_.n_sequences() == 0 && cached_.empty()) return SIZE_MAX;  // the pool may not exist yet
  const kv::KvPagePool& p = session_.pages();
  return p.max_bytes() > p.bytes_reserved() ? p.max_bytes() - p.bytes_reserved() : 0;
}

void Scheduler::add_step_pages(const kv::KvGeometry& g, SequenceId live, StepPages& n) const {
  const bool packs = g.sealed_format != g.format;
  const int64_t heads = int64_t{g.n_layer} * g.n_head_kv;
  auto& open = n[static_cast<size_t>(g.format)];
  auto& sealed = n[static_cast<size_t>(g.sealed_format)];
  if (live < 0) {
    open += heads;
    if (packs) sealed += heads;
    return;
  }
  const kv::KvPagePool& pool = session_.pages();
  const kv::KvSequence& s = session_.sequence(live);
  const bool may_copy_shared = !session_.policy(live).passive_during_decode();
  for (int32_t l = 0; l < g.n_layer; ++l)
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      const kv::KvHeadCache& hc = s.head(l, h);
      int32_t n_open = 0;
      bool shared = false;
      for (const kv::KvPage& p : hc.pages) {
        if (p.format == g.format) n_open += p.n_rows;
        shared = shared || pool.kv_page_holders(p) > 1;
      }
      const bool last_full_or_shared =
          hc.pages.empty() || hc.pages.back().n_rows >= g.page_tokens || pool.kv_page_holders(hc.pages.back()) > 1;
      open += last_full_or_shared + (shared && may_copy_shared);
      if (packs && n_open + 1 >= g.page_tokens + g.n_recent_full_precision) ++sealed;
    }
}

size_t Scheduler::step_pages_bytes(const StepPages& n, int32_t page_tokens) const {
  const int32_t head_dim = model_.config().head_dim;
  size_t bytes = 0;
  for (size_t f = 0; f < n.size(); ++f) {
    if (n[f] == 0) continue;
    const size_t page = kv_page_bytes(static_cast<KvFormat>(f), page_tokens, head_dim);
    const size_t chunk = kv::kv_pool_chunk_bytes(page), per_chunk = chunk / page;
    bytes += (static_cast<size_t>(n[f]) + per_chunk - 1) / per_chunk * chunk;
  }
  return bytes;
}

Scheduler::StepPages Scheduler::running_step_pages() const {
  StepPages n{};
  for (const auto& r : running_)
    if (r->seq >= 0 && !r->done) add_step_pages(session_.sequence(r->seq).geometry(), r->seq, n);
  return n;
}

size_t Scheduler::prompt_bytes(const kv::KvPolicy& p, int32_t n_tokens, bool compress_chunks) const {
  const ModelConfig& c = model_.config();
  const int32_t T = p.page_tokens() > 0 ? p.page_tokens() : kv::KvGeometry{}.page_tokens;
  const int64_t heads = int64_t{c.n_layer} * c.n_head_kv;
  const kv::KvReconstruction rec = p.reconstruction();
  const int64_t extra = rec.chunk > 0 ? rec.chunk + rec.n_overlap + 256 : 0;
  int64_t pages = ((n_tokens + extra + T - 1) / T + 1) * heads;
  // Cut after every chunk, the cache holds at most what the policy keeps of the tokens so far plus the next chunk
  // in every head; on top, each head's partial page and one more.
  const int64_t kept = compress_chunks ? p.max_tokens_after_cut(n_tokens) : -1;
  if (kept >= 0) pages = std::min(pages, (kept + heads * opts_.session.n_batch + T - 1) / T + 2 * heads);
  return static_cast<size_t>(pages) * kv::kv_pool_chunk_bytes(kv_page_bytes(p.page_format(), T, c.head_dim));
}

bool Scheduler::make_room(size_t bytes) {
  while (free_bytes() < bytes && !cached_.empty()) {
    session_.remove_sequence(cached_.front()->seq);
    cached_.erase(cached_.begin());
  }
  return free_bytes() >= bytes;
}

bool Scheduler::try_admit(Request& r) {
  const ModelConfig& c = model_.config();
  std::unique_ptr<kv::KvPolicy> policy;
  try {
    if (r.to_prefill.empty()) fail("the prompt is empty");
    if (static_cast<int64_t>(r.to_prefill.size()) > opts_.session.n_ctx)
      fail("the prompt has {} tokens, more than the context of {}", r.to_prefill.size(), opts_.session.n_ctx);
    policy = kv::make_kv_policy(r.in.kv, c.n_layer, c.n_head_kv);
    if (r.in.prefill_compress) check_policy_compresses_chunks(*policy);
    if (!r.sampler) {
      r.sampler = std::make_unique<Sampler>(r.in.sampling);
      for (int32_t t : r.in.prompt) r.sampler->accept(t);
      r.filter = std::make_unique<StopFilter>(r.in.stop);
    }
  } catch (const std::exception& e) {
    finish(r, StopReason::Length, e.what());
    return true;  // consumed: it ends here
  }
  // The cached sequence sharing the longest prefix that the policy leaves as written.
  const int32_t n = static_cast<int32_t>(r.to_prefill.size());
  r.n_shareable = shareable_prefix(r, *policy, n);
  size_t best = cached_.size();
  int32_t best_len = 0;
  for (size_t i = 0; i < cached_.size(); ++i) {
    if (session_.sequence(cached_[i]->seq).geometry().format != policy->page_format()) continue;
    const std::vector<int32_t>& t = cached_[i]->tokens;
    const size_t most = std::min(t.size(), static_cast<size_t>(r.n_shareable));
    size_t l = 0;
    while (l < most && t[l] == r.to_prefill[l]) ++l;
    if (static_cast<int32_t>(l) > best_len) {
      best_len = static_cast<int32_t>(l);
      best = i;
    }
  }
  // Room for the prompt beside every running sequence's next step; cached sequences go first, least recently used
  // first (not the one shared). A policy that evicts from shared pages copies them first: it may need pages for the
  // whole prompt.
  std::unique_ptr<Cached> shared;
  if (best < cached_.size()) {
    shared = std::move(cached_[best]);
    cached_.erase(cached_.begin() + static_cast<std::ptrdiff_t>(best));
  }
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  geo.format = policy->page_format();
  geo.sealed_format = policy->sealed_format();
  if (policy->page_tokens() > 0) geo.page_tokens = policy->page_tokens();
  const int32_t n_private = policy->keeps_every_token() ? n - best_len : n;
  StepPages growth = running_step_pages();
  add_step_pages(geo, -1, growth);
  const size_t need =
      prompt_bytes(*policy, n_private, r.in.prefill_compress) + step_pages_bytes(growth, geo.page_tokens);
  const bool room = make_room(need) || running_.empty();
  if (shared) cached_.push_back(std::move(shared));  // most recently used now
  if (!room) return false;
  try {
    r.seq = session_.add_sequence(std::move(policy));
    if (best_len > 0) session_.share_prefix(r.seq, cached_.back()->seq, best_len);
  } catch (const std::exception& e) {
    if (r.seq >= 0) session_.remove_sequence(r.seq);
    r.seq = -1;
    finish(r, StopReason::Length, e.what());
    return true;
  }
  r.n_reused = best_len;
  r.out.n_reused = r.n_reused;  // after a preemption: the last prefill's
  r.needs_prefill = true;
  return true;
}

void Scheduler::admit() {
  // One prompt waits for its prefill at a time: admission counts the pages of what is running.
  for (const auto& r : running_)
    if (r->needs_prefill && !r->done) return;
  while (!waiting_.empty() && n_running() < opts_.session.n_seq_max) {
    Request& r = *waiting_.front();
    if (r.cancelled()) {
      finish(r, StopReason::Cancelled);
      waiting_.pop_front();
      continue;
    }
    if (!try_admit(r)) return;
    std::unique_ptr<Request> req = std::move(waiting_.front());
    waiting_.pop_front();
    if (req->done) continue;  // it failed its checks
    running_.push_back(std::move(req));
    return;
  }
}

bool Scheduler::step() {
  for (auto& r : waiting_)
    if (!r->done && r->cancelled()) finish(*r, StopReason::Cancelled);
  std::erase_if(waiting_, [](const auto& r) { return r->done; });
  admit();
  Request* to_prefill = nullptr;
  for (const auto& r : running_)
    if (r->needs_prefill && !r->done) to_prefill = r.get();
  if (to_prefill != nullptr) prefill(*to_prefill);
  decode_step(nullptr);
  release_finished();
  return !idle();
}

void Scheduler::prefill(Request& r) {
  const int32_t n = static_cast<int32_t>(r.to_prefill.size());
  PrefillOptions po;
  po.logit_positions = {n - r.n_reused - 1};
  po.compress_chunks = r.in.prefill_compress;
  // The prompt's prefix is kept for later requests as it passes the last whole chunk before what the policy
  // changes (so the prefill's chunks stay where they are without it).
  const int32_t nb = opts_.session.n_batch;
  const int32_t n_to_share = (r.n_shareable - r.n_reused) / nb * nb;
  if (n_to_share > 0) {
    po.prefix_at = n_to_share;
    po.on_prefix = [&] {
      const KvFormat f = session_.sequence(r.seq).geometry().format;
      const SequenceId copy = session_.add_sequence(f == KvFormat::F32 ? "full:type=f32" : "full");
      try {
        session_.share_prefix(copy, r.seq, r.n_reused + n_to_share);
      } catch (const Error&) {
        session_.remove_sequence(copy);  // no room for the page the prefix ends inside: the request goes on uncached
        return;
      }
      keep_cached(copy, std::vector<int32_t>(r.to_prefill.begin(), r.to_prefill.begin() + r.n_reused + n_to_share));
    };
  }
  // Between chunks the running requests take a step each (Sarathi-Serve's chunked prefill: a long prompt holds no
  // stream up for more than one chunk).
  po.progress = [&](int32_t done, int32_t all) {
    if (r.cancelled()) throw PrefillCancelled{};
    if (done < all) decode_step(&r);
  };
  try {
    session_.prefill(r.seq, std::span<const int32_t>(r.to_prefill).subspan(static_cast<size_t>(r.n_reused)), po,
                     r.logits);
  } catch (const PrefillCancelled&) {
    finish(r, StopReason::Cancelled);
    return;
  } catch (const std::bad_alloc&) {
    finish(r, StopReason::Length, "out of memory");
    return;
  } catch (const std::exception& e) {
    finish(r, StopReason::Length, e.what());
    return;
  }
  r.ran = std::move(r.to_prefill);
  r.to_prefill.clear();
  r.needs_prefill = false;
  sample_next(r);
}

bool Scheduler::sample_next(Request& r) {
  // Generator::generate's loop, one token at a time, in the same order.
  const int32_t n_vocab = model_.config().n_vocab;
  RequestOutcome& o = r.out;
  auto end = [&](StopReason stop, std::string error = {}) {
    finish(r, stop, std::move(error));
    return false;
  };
  if (o.n_generated >= r.in.n_predict) return end(StopReason::Length);
  int32_t id = 0;
  try {
    id = r.sampler->sample(r.logits.data(), n_vocab);
  } catch (const std::exception& e) {
    return end(StopReason::Length, e.what());
  }
  r.sampler->accept(id);
  if (!r.in.ignore_eog && tok_.is_eog(id)) return end(StopReason::Eog);
  o.tokens.push_back(id);
  ++o.n_generated;
  if (r.in.on_token && !r.in.on_token(id, r.logits.data())) return end(StopReason::Cancelled);
  bool keep_going = true;
  const TextFn emit = [&](std::string_view s) { return r.in.on_text ? r.in.on_text(s) : true; };
  if (r.filter->push(tok_.token_bytes(id), emit, keep_going)) return end(StopReason::StopString);
  if (!keep_going) return end(StopReason::Cancelled);
  if (o.n_generated >= r.in.n_predict) return end(StopReason::Length);
  if (!session_.context_has_room(r.seq)) return end(StopReason::ContextFull);
  r.next_token = id;
  return true;
}

void Scheduler::decode_step(const Request* prefilling) {
  std::vector<Request*> batch;
  for (const auto& up : running_) {
    Request& r = *up;
    if (&r == prefilling || r.done || r.needs_prefill) continue;
    if (r.cancelled()) {
      finish(r, StopReason::Cancelled);
      continue;
    }
    batch.push_back(&r);
  }
  // Preemption: while the step could outgrow the pool, the newest request gives its pages back and waits to be
  // recomputed; the oldest always runs.
  auto growth = [&] {
    StepPages n{};
    for (const Request* r : batch) add_step_pages(session_.sequence(r->seq).geometry(), r->seq, n);
    return step_pages_bytes(n, session_.sequence(batch.front()->seq).geometry().page_tokens);
  };
  while (batch.size() > 1 && !make_room(growth())) {
    Request& victim = *batch.back();
    batch.pop_back();
    session_.remove_sequence(victim.seq);
    victim.seq = -1;
    victim.to_prefill = victim.ran;
    victim.to_prefill.push_back(victim.next_token);
    victim.ran.clear();
    victim.needs_prefill = true;
    ++victim.out.n_preempted;
    auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == &victim; });
    waiting_.push_front(std::move(*it));
    running_.erase(it);
  }
  if (batch.empty()) return;
  const int32_t n_vocab = model_.config().n_vocab;
  std::vector<SequenceStep> steps;
  for (Request* r : batch) steps.push_back({r->seq, r->next_token});
  step_logits_.resize(steps.size() * static_cast<size_t>(n_vocab));
  try {
    session_.step(steps, step_logits_.data());
  } catch (const std::bad_alloc&) {
    for (Request* r : batch) finish(*r, StopReason::Length, "out of memory");
    return;
  } catch (const std::exception& e) {
    for (Request* r : batch) finish(*r, StopReason::Length, e.what());
    return;
  }
  batch_sizes_.push_back(static_cast<int32_t>(batch.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    Request& r = *batch[i];
    r.ran.push_back(r.next_token);
    std::memcpy(r.logits.data(), step_logits_.data() + i * n_vocab, static_cast<size_t>(n_vocab) * sizeof(float));
    sample_next(r);
  }
}

void Scheduler::finish(Request& r, StopReason stop, std::string error) {
  if (r.done) return;
  r.done = true;
  RequestOutcome& o = r.out;
  o.stop = stop;
  o.error = std::move(error);
  if (r.filter && o.error.empty() && stop != StopReason::StopString && r.in.on_text)
    r.filter->flush([&](std::string_view s) { return r.in.on_text(s); });
  if (r.seq >= 0) {
    o.kv_bytes = session_.bytes(r.seq);
    o.kv_full_f16_bytes = session_.sequence(r.seq).full_f16_bytes(session_.position(r.seq));
    kv::KvPolicy& p = session_.policy(r.seq);
    const bool keep = opts_.prefix_reuse && o.error.empty() && stop != StopReason::Cancelled &&
                      p.keeps_every_token() && model_.config().sliding_window <= 0 &&
                      static_cast<int32_t>(r.ran.size()) == session_.position(r.seq);
    if (keep) {
      keep_cached(r.seq, std::move(r.ran));
    } else {
      session_.remove_sequence(r.seq);
    }
    r.seq = -1;
  }
  if (r.in.on_done) r.in.on_done(o);
}

void Scheduler::release_finished() {
  std::erase_if(running_, [](const auto& r) { return r->done; });
}

void Scheduler::cancel_all() {
  for (auto& r : running_) finish(*r, StopReason::Cancelled);
  for (auto& r : waiting_) finish(*r, StopReason::Cancelled);
  running_.clear();
  waiting_.clear();
  for (auto& c : cached_) session_.remove_sequence(c->seq);
  cached_.clear();
}

Scheduler::KvPageCounts Scheduler::kv_pages() const {
  if (session_.n_sequences() == 0) return {};
  // Cached: the pages the cached sequences alone hold, each counted once however many of them hold it, none a
  // running request shares. In use: every other page of the pool.
  std::unordered_map<uint64_t, int32_t> holders;
  for (const auto& c : cached_) {
    const kv::KvSequence& s = session_.sequence(c->seq);
    const kv::KvGeometry& g = s.geometry();
    for (int32_t l = 0; l < g.n_layer; ++l)
      for (int32_t h = 0; h < g.n_head_kv; ++h)
        for (const kv::KvPage& p : s.head(l, h).pages)
          ++holders[uint64_t{static_cast<uint32_t>(p.format)} << 32 | static_cast<uint32_t>(p.id)];
  }
  const kv::KvPagePool& pool = session_.pages();
  KvPageCounts n;
  for (const auto& [key, count] : holders)
    if (pool.kv_page_holders(kv::KvPage{static_cast<int32_t>(key & 0xffffffffu), static_cast<KvFormat>(key >> 32), 0}) ==
        count)
      ++n.cached;
  n.in_use = static_cast<int64_t>(pool.n_pages_in_use()) - n.cached;
  return n;
}

}  // namespace longctx
