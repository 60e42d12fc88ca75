#include "serial_engine.h"

#include <chrono>

#include "core/error.h"
#include "engine/generator.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "token_logprobs.h"

namespace longctx::server {

SerialEngine::SerialEngine(const Model& model, const Tokenizer& tok, const SerialEngineOptions& o,
                           ServerMetrics* metrics)
    : model_(model), tok_(tok), opt_(o), metrics_(metrics), pool_(std::max(1, o.n_threads)) {
  if (o.n_ctx <= 0) fail("the context must be positive (got {})", o.n_ctx);
  if (o.max_queue < 0) fail("the queue length must not be negative (got {})", o.max_queue);
  const ModelConfig& c = model.config();
  const int64_t page_tokens = kv::KvGeometry{}.page_tokens;
  kv_capacity_pages_ = static_cast<int64_t>(c.n_layer) * c.n_head_kv * ((o.n_ctx + page_tokens - 1) / page_tokens);
  worker_ = std::thread([this] { worker_loop(); });
}

SerialEngine::~SerialEngine() { shutdown(); }

std::shared_ptr<RequestChannel> SerialEngine::submit(GenerationJob job) {
  auto channel = std::make_shared<RequestChannel>();
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw EngineStopped("the server is shutting down");
    if (static_cast<int32_t>(queue_.size()) >= opt_.max_queue)
      throw QueueFull(fmt::format("the queue is full ({} requests waiting); retry later", queue_.size()));
    queue_.push_back({std::move(job), channel});
  }
  cv_.notify_one();
  return channel;
}

EngineGauges SerialEngine::gauges() const {
  EngineGauges g;
  {
    std::lock_guard lock(mu_);
    g.queue_length = static_cast<int64_t>(queue_.size());
  }
  g.running = running_.load();
  g.kv_pages_in_use = kv_pages_in_use_.load();
  g.kv_pages_cached = kv_pages_cached_.load();
  g.kv_pages_free = std::max<int64_t>(0, kv_capacity_pages_ - g.kv_pages_in_use - g.kv_pages_cached);
  return g;
}

void SerialEngine::shutdown() {
  std::deque<Item> dropped;
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    dropped.swap(queue_);
    if (running_channel_) running_channel_->cancel();
  }
  cv_.notify_all();
  for (Item& it : dropped) {
    it.channel->finish(FinishReason::Cancelled, {}, "the server is shutting down");
    if (metrics_) metrics_->count_finish("cancelled");
  }
  if (worker_.joinable()) worker_.join();
}

void SerialEngine::worker_loop() {
  while (true) {
    Item item;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      item = std::move(queue_.front());
      queue_.pop_front();
      // A shutdown that starts now cancels the running job too.
      if (stopping_) item.channel->cancel();
      running_channel_ = item.channel;
      running_ = 1;
    }
    run(item);
    {
      std::lock_guard lock(mu_);
      running_channel_.reset();
    }
    running_ = 0;
    kv_pages_in_use_ = 0;
  }
}

namespace {
struct Cancelled {};
}  // namespace

void SerialEngine::drop_kept() {
  kept_.reset();  // before the policy it refers to
  kept_policy_.reset();
  kv_pages_cached_ = 0;
}

Generator& SerialEngine::generator_for(const std::string& kv_spec, const GenerateParams& gp) {
  const ModelConfig& c = model_.config();
  auto policy = kv::make_kv_policy(kv_spec, c.n_layer, c.n_head_kv);
  if (kept_ && kept_policy_->describe() == policy->describe()) {
    kv_pages_cached_ = 0;  // the running job holds them now
    kept_->set_request(gp);
    return *kept_;
  }
  drop_kept();
  kept_policy_ = std::move(policy);
  kept_ = std::make_unique<Generator>(model_, tok_, pool_, *kept_policy_, gp);
  return *kept_;
}

void SerialEngine::run(Item& item) {
  GenerationJob& job = item.job;
  RequestChannel& ch = *item.channel;
  Usage usage;
  usage.prompt_tokens = static_cast<int32_t>(job.prompt.size());
  FinishReason reason = FinishReason::Cancelled;
  std::string error;
  if (!ch.cancelled()) {
    try {
      const ModelConfig& c = model_.config();
      GenerateParams gp;
      gp.n_predict = job.max_tokens;
      gp.n_ctx = opt_.n_ctx;
      gp.n_batch = opt_.n_batch;
      gp.device = opt_.device;
      gp.sampling = job.sampling;
      gp.stop = job.stop;
      gp.reuse_prefix = opt_.prefix_reuse;
      std::vector<TokenLogprob> pending;  // of tokens whose text the stop filter still holds
      const Generator* gen_ptr = nullptr;
      auto last = job.arrival;
      bool first = true;
      gp.on_token = [&](int32_t id, const float* logits) {
        const auto now = std::chrono::steady_clock::now();
        if (metrics_) {
          (first ? metrics_->time_to_first_token : metrics_->time_per_output_token)
              .observe(std::chrono::duration<double>(now - last).count());
          metrics_->add_tokens(0, 1);
        }
        first = false;
        last = now;
        if (job.n_logprobs >= 0) {
          const StepLogprobs s = token_logprobs(logits, c.n_vocab, id, job.n_logprobs);
          TokenLogprob t{tok_.token_bytes(id), s.logprob, {}};
          for (const auto& [tid, lp] : s.top) t.top.emplace_back(tok_.token_bytes(tid), lp);
          pending.push_back(std::move(t));
        }
        if (gen_ptr) kv_pages_in_use_ = static_cast<int64_t>(gen_ptr->page_pool().n_pages_in_use());
        return !ch.cancelled();
      };
      Generator& gen = generator_for(job.kv, gp);
      gen_ptr = &gen;
      if (metrics_) metrics_->add_tokens(usage.prompt_tokens, 0);
      const TextFn on_text = [&](std::string_view s) {
        ch.push(std::string(s), std::move(pending));
        pending.clear();
        return !ch.cancelled();
      };
      // Prefill cannot be stopped by a return value: a cancelled job leaves it between chunks by an exception.
      const ProgressFn on_progress = [&](int32_t, int32_t) {
        kv_pages_in_use_ = static_cast<int64_t>(gen.page_pool().n_pages_in_use());
        if (ch.cancelled()) throw Cancelled{};
      };
      const GenerateStats st = gen.generate(job.prompt, on_text, on_progress);
      usage.completion_tokens = st.n_generated;
      usage.cached_tokens = st.n_reused;
      usage.kv_bytes_held = st.kv_bytes.total();
      usage.kv_bytes_full = st.kv_full_f16_bytes;
      switch (st.stop_reason) {
        case StopReason::Eog:
        case StopReason::StopString: reason = FinishReason::Stop; break;
        case StopReason::Length:
        case StopReason::ContextFull: reason = FinishReason::Length; break;
        case StopReason::Cancelled: reason = FinishReason::Cancelled; break;
      }
    } catch (const Cancelled&) {
      reason = FinishReason::Cancelled;
      drop_kept();
    } catch (const std::bad_alloc&) {
      drop_kept();
      reason = FinishReason::Error;
      error = "out of memory";
    } catch (const std::exception& e) {
      drop_kept();
      reason = FinishReason::Error;
      error = e.what();
    }
  }
  // A cancelled or failed job's cache is gone by now; a finished one stays only where the next job may reuse it.
  if (reason == FinishReason::Cancelled || !opt_.prefix_reuse || !kept_policy_ || !kept_policy_->keeps_every_token())
    drop_kept();
  kv_pages_in_use_ = 0;
  kv_pages_cached_ = kept_ ? static_cast<int64_t>(kept_->page_pool().n_pages_in_use()) : 0;
  if (metrics_) metrics_->count_finish(finish_reason_name(reason));
  ch.finish(reason, usage, std::move(error));
}

}  // namespace longctx::server
