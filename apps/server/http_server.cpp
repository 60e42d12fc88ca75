#include "http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

#include "core/error.h"

namespace longctx::server {

namespace {

std::string sockaddr_ip(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a).sin_addr, buf, sizeof buf);
  if (a.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(a).sin6_addr, buf, sizeof buf);
  return buf;
}

int sockaddr_port(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The socket of the connection a request came on. cpp-httplib does not hand it to handlers, so it is found among
// the process's descriptors by its two ends; it stays open (and so unambiguous) while the handler runs. -1: not
// found, and then the client's going away is noticed only by a failed write.
int connection_socket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (sockaddr_port(local) == req.local_port && sockaddr_port(peer) == req.remote_port &&
        sockaddr_ip(peer) == req.remote_addr) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

// Whether the peer still holds its end open: recv() peeks 0 bytes once it has closed.
bool peer_alive(int fd) {
  if (fd < 0) return true;
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;
  if (n == 0) return false;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump_json(error_body(e)), "application/json");
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

}  // namespace

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int serve_http(OpenAiService& service, RequestEngine& engine, const HttpOptions& o) {
  httplib::Server svr;
  const int n_threads = std::max(4, o.n_http_threads);
  svr.new_task_queue = [n_threads] { return new httplib::ThreadPool(static_cast<size_t>(n_threads)); };
  svr.set_payload_max_length(o.max_body_bytes);
  svr.set_read_timeout(30, 0);
  svr.set_write_timeout(30, 0);

  ServerMetrics& m = service.metrics();
  const auto count = [&m](const httplib::Request& req, int status) {
    std::string ep = req.path.empty() ? "" : req.path.substr(req.path.rfind("/v1/", 0) == 0 ? 4 : 1);
    if (ep != "chat/completions" && ep != "completions" && ep != "models" && ep != "health" && ep != "metrics")
      ep = "other";  // any path a client makes up would otherwise grow the label set without bound
    m.count_request(ep, status);
  };

  // The key guards everything but /health (what a load balancer probes).
  svr.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (o.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0 && constant_time_equal(auth.substr(7), o.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, "a valid API key is required: Authorization: Bearer <key>", "authentication_error",
                             "", "invalid_api_key"));
    count(req, 401);
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses cpp-httplib answers itself (413 over the body limit, 404, 400 for a broken request line) get
  // OpenAI's error body too.
  svr.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = fmt::format("HTTP {}", res.status);
    std::string code;
    if (res.status == 413) {
      msg = fmt::format("the request body is larger than this server's limit of {} bytes (--max-body)", o.max_body_bytes);
      code = "body_too_large";
    } else if (res.status == 404) {
      msg = fmt::format("no such endpoint: {} {}", req.method, req.path);
      code = "not_found";
    }
    send_error(res, ApiError(res.status, msg, "invalid_request_error", "", code));
    count(req, res.status);
  });
  svr.set_exception_handler([&](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, "internal error: " + what, "server_error"));
    count(req, 500);
  });

  const auto completions = [&](Endpoint endpoint) {
    return [&, endpoint](const httplib::Request& req, httplib::Response& res) {
      StartedRequest started;
      try {
        started = service.start(req.body, endpoint);
      } catch (const ApiError& e) {
        send_error(res, e);
        count(req, e.status);
        return;
      }
      const int fd = connection_socket(req);
      if (!started.request.stream) {
        try {
          res.set_content(dump_json(service.collect(started, [fd] { return peer_alive(fd); })), "application/json");
          count(req, 200);
        } catch (const ApiError& e) {
          send_error(res, e);
          count(req, e.status);
        }
        return;
      }
      count(req, 200);
      auto s = std::make_shared<StartedRequest>(std::move(started));
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [&service, s, fd](size_t, httplib::DataSink& sink) {
            service.stream(
                *s, [&sink](const std::string& ev) { return sink.write(ev.data(), ev.size()); },
                [fd] { return peer_alive(fd); });
            sink.done();
            return true;
          },
          // Whatever ended the response (a write error included), the job must not outlive it.
          [s](bool) { s->channel->cancel(); });
    };
  };
  svr.Post("/v1/chat/completions", completions(Endpoint::Chat));
  svr.Post("/v1/completions", completions(Endpoint::Completion));
  svr.Get("/v1/models", [&](const httplib::Request& req, httplib::Response& res) {
    res.set_content(dump_json(service.models()), "application/json");
    count(req, 200);
  });
  svr.Get("/health", [&](const httplib::Request& req, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
    count(req, 200);
  });
  svr.Get("/metrics", [&](const httplib::Request& req, httplib::Response& res) {
    count(req, 200);
    res.set_content(service.metrics_text(), "text/plain; version=0.0.4");
  });

  int port = o.port;
  if (port == 0) {
    port = svr.bind_to_any_port(o.host);
  } else if (!svr.bind_to_port(o.host, port)) {
    port = -1;
  }
  if (port < 0) fail("cannot listen on {}:{} (in use, or not an address of this machine)", o.host, o.port);

  // SIGINT / SIGTERM arrive here (blocked elsewhere): stop the engine first, so the handlers waiting on it answer
  // and return, then the listener.
  std::atomic<bool> done{false};
  std::thread signals([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    if (done.load()) return;
    std::fprintf(stderr, "longctx serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    engine.shutdown();
    svr.stop();
  });
  std::fprintf(stderr, "longctx serve: listening on http://%s:%d\n", o.host.c_str(), port);
  std::fflush(stderr);
  const bool ok = svr.listen_after_bind();
  // Ended by other means than a signal (a failed listener): wake the signal thread so it can be joined.
  done = true;
  if (signals.joinable()) {
    pthread_kill(signals.native_handle(), SIGTERM);
    signals.join();
  }
  engine.shutdown();
  std::fprintf(stderr, "longctx serve: stopped\n");
  return ok ? 0 : 1;
}

}  // namespace longctx::server
