#include "batching_engine.h"

#include <chrono>

#include "core/error.h"
#include "kv/kv_store.h"
#include "token_logprobs.h"

namespace longctx::server {

namespace {

SchedulerOptions scheduler_options(const BatchingEngineOptions& o) {
  if (o.n_ctx <= 0) fail("the context must be positive (got {})", o.n_ctx);
  if (o.max_running <= 0) fail("the number of running requests must be positive (got {})", o.max_running);
  if (o.max_queue < 0) fail("the queue length must not be negative (got {})", o.max_queue);
  SchedulerOptions so;
  so.session.n_ctx = o.n_ctx;
  so.session.n_batch = o.n_batch;
  so.session.device = o.device;
  so.session.n_seq_max = o.max_running;
  so.session.batch_invariant = o.batch_invariant;
  so.session.kv_max_bytes = o.kv_max_bytes;
  so.prefix_reuse = o.prefix_reuse;
  return so;
}

FinishReason finish_reason(const RequestOutcome& o) {
  if (!o.error.empty()) return FinishReason::Error;
  switch (o.stop) {
    case StopReason::Eog:
    case StopReason::StopString: return FinishReason::Stop;
    case StopReason::Length:
    case StopReason::ContextFull: return FinishReason::Length;
    case StopReason::Cancelled: return FinishReason::Cancelled;
  }
  return FinishReason::Error;
}

}  // namespace

BatchingEngine::BatchingEngine(const Model& model, const Tokenizer& tok, const BatchingEngineOptions& o,
                               ServerMetrics* metrics)
    : model_(model),
      tok_(tok),
      opt_(o),
      metrics_(metrics),
      pool_(std::max(1, o.n_threads)),
      scheduler_(model, tok, pool_, scheduler_options(o)) {
  const ModelConfig& c = model.config();
  const int64_t page_tokens = kv::KvGeometry{}.page_tokens;
  kv_capacity_pages_ = o.kv_max_bytes > 0
                           ? static_cast<int64_t>(o.kv_max_bytes / kv_page_bytes(KvFormat::F16, page_tokens, c.head_dim))
                           : static_cast<int64_t>(o.max_running) * c.n_layer * c.n_head_kv *
                                 ((o.n_ctx + page_tokens - 1) / page_tokens);
  worker_ = std::thread([this] { worker_loop(); });
}

BatchingEngine::~BatchingEngine() { shutdown(); }

std::shared_ptr<RequestChannel> BatchingEngine::submit(GenerationJob job) {
  auto channel = std::make_shared<RequestChannel>();
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw EngineStopped("the server is shutting down");
    const int64_t waiting = static_cast<int64_t>(incoming_.size()) + waiting_.load();
    if (waiting >= opt_.max_queue)
      throw QueueFull(fmt::format("the queue is full ({} requests waiting); retry later", waiting));
    incoming_.push_back({std::move(job), channel});
  }
  cv_.notify_one();
  return channel;
}

EngineGauges BatchingEngine::gauges() const {
  EngineGauges g;
  {
    std::lock_guard lock(mu_);
    g.queue_length = static_cast<int64_t>(incoming_.size()) + waiting_.load();
  }
  g.running = running_.load();
  g.kv_pages_in_use = kv_pages_in_use_.load();
  g.kv_pages_cached = kv_pages_cached_.load();
  g.kv_pages_free = std::max<int64_t>(0, kv_capacity_pages_ - g.kv_pages_in_use - g.kv_pages_cached);
  return g;
}

void BatchingEngine::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
  }
  cancel_all_ = true;
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

ScheduledRequest BatchingEngine::to_request(Item item) {
  // What the callbacks share: the channel, logprobs of tokens whose text the stop filter still holds, timing.
  struct State {
    GenerationJob job;
    std::shared_ptr<RequestChannel> channel;
    std::vector<TokenLogprob> pending;
    std::chrono::steady_clock::time_point last;
    bool first = true;
  };
  auto st = std::make_shared<State>();
  st->job = std::move(item.job);
  st->channel = std::move(item.channel);
  st->last = st->job.arrival;
  const int32_t n_vocab = model_.config().n_vocab;
  ScheduledRequest r;
  r.prompt = st->job.prompt;
  r.kv = st->job.kv;
  r.n_predict = st->job.max_tokens;
  r.sampling = st->job.sampling;
  r.stop = st->job.stop;
  r.ignore_eog = st->job.ignore_eog;
  r.prefill_compress = st->job.prefill_compress;
  r.on_token = [this, st, n_vocab](int32_t id, const float* logits) {
    const auto now = std::chrono::steady_clock::now();
    if (metrics_) {
      (st->first ? metrics_->time_to_first_token : metrics_->time_per_output_token)
          .observe(std::chrono::duration<double>(now - st->last).count());
      metrics_->add_tokens(0, 1);
    }
    st->first = false;
    st->last = now;
    if (st->job.n_logprobs >= 0) {
      const StepLogprobs s = token_logprobs(logits, n_vocab, id, st->job.n_logprobs);
      TokenLogprob t{tok_.token_bytes(id), s.logprob, {}};
      for (const auto& [tid, lp] : s.top) t.top.emplace_back(tok_.token_bytes(tid), lp);
      st->pending.push_back(std::move(t));
    }
    return !st->channel->cancelled();
  };
  r.on_text = [st](std::string_view s) {
    st->channel->push(std::string(s), std::move(st->pending));
    st->pending.clear();
    return !st->channel->cancelled();
  };
  r.cancelled = [this, st] { return st->channel->cancelled() || cancel_all_.load(); };
  r.on_done = [this, st](const RequestOutcome& o) {
    Usage u;
    u.prompt_tokens = o.n_prompt;
    u.completion_tokens = o.n_generated;
    u.cached_tokens = o.n_reused;
    u.kv_bytes_held = o.kv_bytes.total();
    u.kv_bytes_full = o.kv_full_f16_bytes;
    u.kv_bytes_shared = o.kv_bytes.shared;
    const FinishReason reason = finish_reason(o);
    if (metrics_) {
      metrics_->count_finish(finish_reason_name(reason));
      metrics_->add_preemptions(o.n_preempted);
    }
    st->channel->finish(reason, u, reason == FinishReason::Cancelled && cancel_all_ ? "the server is shutting down"
                                                                                       : o.error);
  };
  if (metrics_) metrics_->add_tokens(static_cast<int64_t>(r.prompt.size()), 0);
  return r;
}

void BatchingEngine::worker_loop() {
  while (true) {
    std::deque<Item> arrived;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !incoming_.empty() || !scheduler_.idle(); });
      arrived.swap(incoming_);
      if (stopping_) break;
    }
    for (Item& it : arrived) scheduler_.add(to_request(std::move(it)));
    waiting_ = scheduler_.n_waiting();
    scheduler_.step();
    // The page counts are stored before the request counts: a reader that sees this step's running count (a test
    // waiting for 0) then reads this step's pages, not the last step's.
    const Scheduler::KvPageCounts pages = scheduler_.kv_pages();
    kv_pages_in_use_ = pages.in_use;
    kv_pages_cached_ = pages.cached;
    waiting_ = scheduler_.n_waiting();
    running_ = scheduler_.n_running();
    if (metrics_)
      for (int32_t n : scheduler_.decode_batch_sizes()) metrics_->decode_batch_size.observe(n);
    scheduler_.decode_batch_sizes().clear();
  }
  // Shutdown: what waits and what runs ends as cancelled, and every page goes back.
  std::deque<Item> arrived;
  {
    std::lock_guard lock(mu_);
    arrived.swap(incoming_);
  }
  for (Item& it : arrived) scheduler_.add(to_request(std::move(it)));
  scheduler_.cancel_all();
  waiting_ = 0;
  running_ = 0;
  kv_pages_in_use_ = 0;
  kv_pages_cached_ = 0;
}

}  // namespace longctx::server
