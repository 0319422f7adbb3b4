// Boost 1.74's Asio needs <utility> before its headers under C++20.
#include <utility>

#include "xcpipe/http/gateway.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <fstream>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "media.h"
#include "socket_io.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/edge.h"
#include "xcpipe/http/chat_request.h"
#include "xcpipe/http/console_page.h"
#include "xcpipe/http/text_stream.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/model_image_spec.h"
#include "xcpipe/tokenizer/prompt_validation.h"

namespace xcpipe::http {
namespace {

namespace bhttp = beast::http;
using json = nlohmann::json;

// Connect and status timeouts towards the coordinator (loopback or a LAN: short).
constexpr std::chrono::milliseconds kCoordinatorConnectTimeout{5000};
constexpr std::chrono::milliseconds kStatusTimeout{2000};
constexpr std::chrono::milliseconds kStatusRefresh{1000};
// A status older than this says nothing about now: /health answers 503.
constexpr std::chrono::milliseconds kStatusStale{5000};
// Idle coordinator connections kept for reuse (each request in flight holds its own).
constexpr size_t kMaxPooledClients = 32;

// True when the peer closed its end (or the socket failed). Bytes it sent meanwhile (a
// pipelined request) are left unread.
bool PeerGone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  if (p.revents & POLLIN) {
    char c;
    return ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }
  return false;
}

bool IsLoopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr) >> 24) == 127;
  }
  if (a.ss_family == AF_INET6) {
    const auto& s6 = reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&s6) || (IN6_IS_ADDR_V4MAPPED(&s6) && s6.s6_addr[12] == 127);
  }
  return false;
}

std::string RandomHex(size_t n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string out(n, '0');
  for (auto& c : out) c = digits[rng() & 15];
  return out;
}

// Equal-time comparison of a presented key with each configured one.
int FindKey(const std::vector<std::string>& keys, std::string_view presented) {
  int found = -1;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& k = keys[i];
    unsigned diff = k.size() != presented.size();
    for (size_t j = 0; j < k.size(); ++j)
      diff |= static_cast<unsigned>(k[j] ^ (j < presented.size() ? presented[j] : 0));
    if (diff == 0) found = static_cast<int>(i);
  }
  return found;
}

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

Response ErrorResponse(const ApiError& e) {
  Response r;
  r.status = e.status;
  r.body = RenderErrorBody(e);
  if (e.retry_after_s > 0) r.headers.emplace_back("Retry-After", std::to_string(e.retry_after_s));
  if (e.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

ApiError MakeError(int status, std::string type, std::string message, std::string code = "") {
  ApiError e;
  e.status = status;
  e.type = std::move(type);
  e.message = std::move(message);
  e.code = std::move(code);
  return e;
}

// "Name: message" as GenerateResult::error carries it -> a Status.
Status StatusFromResultError(const std::string& error) {
  const size_t colon = error.find(": ");
  if (colon != std::string::npos) {
    if (auto code = StatusCodeFromName(error.substr(0, colon))) return Status(*code, error.substr(colon + 2));
  }
  return InternalError(error);
}

}  // namespace

std::string LocalEndpointFor(const std::string& listen) {
  for (const char* wildcard : {"tcp://*:", "tcp://0.0.0.0:"}) {
    const std::string w(wildcard);
    if (listen.rfind(w, 0) == 0) return "tcp://127.0.0.1:" + listen.substr(w.size());
  }
  if (listen.rfind("tcp://[::]:", 0) == 0) return "tcp://[::1]:" + listen.substr(11);
  return listen;
}

struct Gateway::Impl {
  GatewayOptions opt;
  GatewayBackend backend;
  std::mutex endpoint_mu;
  std::string endpoint;

  // The model, as the coordinator's edge reads it.
  checkpoint::ModelSpec spec;
  image::ModelImageSpec image_spec;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  tokenizer::ChatVersion version = tokenizer::ChatVersion::kIxc2Vl;
  coordinator::EdgeLimits edge_limits;
  std::vector<std::string> keys;
  int64_t created = 0;

  int listen_fd = -1;
  std::atomic<bool> stopping{false};
  std::thread accept_thread, status_thread;

  struct Connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::mutex conn_mu;
  std::list<Connection> connections;

  // Admission of chat requests: in progress overall and per key.
  std::mutex slots_mu;
  int requests_in_progress = 0;
  std::map<int, int> per_key;

  // Idle coordinator clients.
  std::mutex pool_mu;
  std::vector<std::unique_ptr<coordinator::Client>> pool;

  // The latest status of the coordinator (refreshed by status_thread).
  std::mutex status_mu;
  std::condition_variable status_cv;
  json status;
  std::string status_error = "no status from the coordinator yet";
  bool refresh_now = false;  // ask again without waiting (the coordinator just became ready)
  Clock::time_point status_at{};

  std::string Endpoint() {
    std::lock_guard<std::mutex> lock(endpoint_mu);
    return endpoint;
  }

  StatusOr<std::unique_ptr<coordinator::Client>> TakeClient() {
    {
      std::lock_guard<std::mutex> lock(pool_mu);
      if (!pool.empty()) {
        auto c = std::move(pool.back());
        pool.pop_back();
        return c;
      }
    }
    return coordinator::Client::Connect(Endpoint(), kCoordinatorConnectTimeout, backend.curve);
  }
  void ReturnClient(std::unique_ptr<coordinator::Client> c) {
    std::lock_guard<std::mutex> lock(pool_mu);
    if (pool.size() < kMaxPooledClients) pool.push_back(std::move(c));
  }

  void StatusLoop() {
    std::unique_ptr<coordinator::Client> client;
    while (!stopping) {
      StatusOr<json> got = UnavailableError("not connected");
      if (!client) {
        auto c = coordinator::Client::Connect(Endpoint(), kStatusTimeout, backend.curve);
        if (c.ok())
          client = std::move(c).value();
        else
          got = c.status();
      }
      if (client) {
        got = client->GetStatus(kStatusTimeout);
        if (!got.ok()) client.reset();
      }
      {
        std::unique_lock<std::mutex> lock(status_mu);
        if (got.ok()) {
          status = std::move(got).value();
          status_at = Clock::now();
          status_error.clear();
        } else {
          status_error = "the coordinator at " + Endpoint() + " does not answer: " + got.status().message();
        }
        status_cv.wait_for(lock, kStatusRefresh, [this] { return stopping.load() || refresh_now; });
        refresh_now = false;
      }
    }
  }

  // nullopt while serving, else why not.
  std::optional<std::string> NotServingReason(json* copy = nullptr) {
    std::lock_guard<std::mutex> lock(status_mu);
    if (copy) *copy = status;
    if (status_at == Clock::time_point{} || Clock::now() - status_at > kStatusStale) {
      return status_error.empty() ? std::string("the coordinator's status is stale") : status_error;
    }
    const std::string state = status.value("state", "");
    if (state != "serving") return "the cluster is " + state + ", not serving yet";
    return std::nullopt;
  }

  int64_t MaxContext() const {
    const int64_t model_limit = spec.llm.max_position_embeddings > 0 ? spec.llm.max_position_embeddings : 4096;
    return std::min(backend.max_context, model_limit);
  }

  // ---- connections ----

  void AcceptLoop() {
    while (!stopping) {
      pollfd p{listen_fd, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) {
        Reap();
        continue;
      }
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      Reap();
      std::lock_guard<std::mutex> lock(conn_mu);
      if (static_cast<int>(connections.size()) >= opt.max_connections) {
        Response r = ErrorResponse(
            MakeError(429, "rate_limit_error",
                      "too many open connections (" + std::to_string(opt.max_connections) + "); retry later",
                      "too_many_connections"));
        r.headers.emplace_back("Retry-After", "1");
        WriteResponse(fd, r, false, 11);
        ::close(fd);
        continue;
      }
      Connection& c = connections.emplace_back();
      c.fd = fd;
      c.thread = std::thread([this, &c] {
        Serve(c.fd);
        c.done = true;
        ::close(c.fd);
      });
    }
  }

  void Reap() {
    std::lock_guard<std::mutex> lock(conn_mu);
    for (auto it = connections.begin(); it != connections.end();) {
      if (it->done) {
        it->thread.join();
        it = connections.erase(it);
      } else {
        ++it;
      }
    }
  }

  bool WriteResponse(int fd, const Response& r, bool keep_alive, unsigned version) {
    std::string out = "HTTP/" + std::string(version == 10 ? "1.0 " : "1.1 ") + std::to_string(r.status) + " " +
                      ReasonPhrase(r.status) + "\r\nServer: xcpipe\r\nContent-Type: " + r.content_type +
                      "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n";
    for (const auto& [k, v] : r.headers) out += k + ": " + v + "\r\n";
    out += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    out += r.body;
    return WriteAll(fd, out, Clock::now() + std::chrono::seconds(opt.write_timeout_s));
  }

  void Serve(int fd) {
    DeadlineStream stream(fd);
    beast::flat_buffer buffer;
    bool first = true;
    while (!stopping) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(opt.max_header_bytes));
      parser.body_limit(opt.max_body_bytes);
      beast::error_code ec;
      // The first request's header must come within the header timeout; later ones may wait
      // the keep-alive idle time.
      stream.set_deadline(Clock::now() + std::chrono::seconds(first ? opt.header_timeout_s : opt.idle_timeout_s));
      first = false;
      bhttp::read_header(stream, buffer, parser, ec);
      if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
        WriteResponse(
            fd,
            ErrorResponse(MakeError(431, "invalid_request_error",
                                    "the request header exceeds " + std::to_string(opt.max_header_bytes) + " bytes")),
            false, 11);
        return;
      }
      if (ec == bhttp::error::body_limit) {
        WriteResponse(fd, ErrorResponse(TooLarge()), false, 11);
        return;
      }
      if (ec == beast::error::timeout && buffer.size() > 0) {
        WriteResponse(fd,
                      ErrorResponse(MakeError(
                          408, "invalid_request_error",
                          "the request header did not arrive within " + std::to_string(opt.header_timeout_s) + " s")),
                      false, 11);
        return;
      }
      if (ec) return;  // closed, idle past the keep-alive time, or not HTTP
      const auto& head = parser.get();
      const unsigned version = head.version();
      bool keep_alive = head.keep_alive();
      std::string target(head.target());
      if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
      const bhttp::verb method = head.method();

      // Route, method and key before the body is read: a refused upload is not received.
      std::optional<Response> early;
      int key_index = -1;
      const bool is_chat = target == "/v1/chat/completions";
      const bool needs_key = target.rfind("/v1/", 0) == 0;
      if (target != "/" && target != "/health" && target != "/v1/models" && target != "/v1/status" && !is_chat &&
          target.rfind("/v1/models/", 0) != 0) {
        early = ErrorResponse(MakeError(404, "not_found_error",
                                        "no route " + target +
                                            "; this server has POST /v1/chat/completions, GET /v1/models, GET "
                                            "/v1/status, GET /health and GET /",
                                        "unknown_url"));
      } else if ((is_chat && method != bhttp::verb::post) ||
                 (!is_chat && method != bhttp::verb::get && method != bhttp::verb::head)) {
        Response r = ErrorResponse(MakeError(405, "invalid_request_error",
                                             std::string(bhttp::to_string(method)) + " is not allowed on " + target +
                                                 "; expected " + (is_chat ? "POST" : "GET"),
                                             "method_not_allowed"));
        r.headers.emplace_back("Allow", is_chat ? "POST" : "GET, HEAD");
        early = r;
      } else if (needs_key && !keys.empty()) {
        std::string auth(head[bhttp::field::authorization]);
        constexpr std::string_view kBearer = "Bearer ";
        if (auth.size() <= kBearer.size() ||
            !std::equal(kBearer.begin(), kBearer.end(), auth.begin(),
                        [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
          early =
              ErrorResponse(MakeError(401, "authentication_error",
                                      "no API key; send the header Authorization: Bearer <key>", "missing_api_key"));
        } else {
          key_index = FindKey(keys, std::string_view(auth).substr(kBearer.size()));
          if (key_index < 0) {
            early = ErrorResponse(MakeError(
                401, "authentication_error",
                "the API key is not valid; expected one of the keys in the server's key file", "invalid_api_key"));
          }
        }
      }
      const bool has_body = !parser.is_done();
      if (early) {
        // The unread body stays unread: close rather than parse past it.
        WriteResponse(fd, *early, keep_alive && !has_body, version);
        if (!keep_alive || has_body) return;
        continue;
      }
      if (has_body) {
        if (beast::iequals(head[bhttp::field::expect], "100-continue")) {
          if (!WriteAll(fd, "HTTP/1.1 100 Continue\r\n\r\n",
                        Clock::now() + std::chrono::seconds(opt.write_timeout_s))) {
            return;
          }
        }
        stream.set_deadline(Clock::now() + std::chrono::seconds(opt.body_timeout_s));
        bhttp::read(stream, buffer, parser, ec);
        if (ec == bhttp::error::body_limit) {
          WriteResponse(fd, ErrorResponse(TooLarge()), false, version);
          return;
        }
        if (ec == beast::error::timeout) {
          WriteResponse(fd,
                        ErrorResponse(MakeError(
                            408, "invalid_request_error",
                            "the request body did not arrive within " + std::to_string(opt.body_timeout_s) + " s")),
                        false, version);
          return;
        }
        if (ec) return;
      }
      const auto started = Clock::now();
      int status = 0;
      bool ok = true;
      if (is_chat) {
        ok = HandleChat(fd, parser.get().body(), key_index, version, &keep_alive, &status);
      } else {
        Response r = HandleGet(target);
        status = r.status;
        if (method == bhttp::verb::head) r.body.clear();
        ok = WriteResponse(fd, r, keep_alive, version);
      }
      spdlog::info("http {} {} {} {:.1f} ms", std::string(bhttp::to_string(method)), target, status,
                   std::chrono::duration<double, std::milli>(Clock::now() - started).count());
      if (!ok || !keep_alive) return;
    }
  }

  ApiError TooLarge() const {
    return MakeError(413, "invalid_request_error",
                     "the request body exceeds " + std::to_string(opt.max_body_bytes) +
                         " bytes; send fewer or smaller images (the server's --http-max-body-bytes)",
                     "body_too_large");
  }

  // ---- GET routes ----

  Response HandleGet(const std::string& target) {
    Response r;
    if (target == "/") {
      r.content_type = "text/html; charset=utf-8";
      r.body = std::string(ConsolePageHtml());
      r.headers.emplace_back("Cache-Control", "no-store");
      r.headers.emplace_back("Content-Security-Policy",
                             "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                             "script-src 'unsafe-inline'");
      return r;
    }
    if (target == "/health") {
      if (auto reason = NotServingReason()) {
        r.status = 503;
        r.body = json{{"status", "unavailable"}, {"reason", *reason}}.dump();
        r.headers.emplace_back("Retry-After", "1");
      } else {
        r.body = json{{"status", "serving"}, {"model", opt.served_model_name}}.dump();
      }
      return r;
    }
    if (target == "/v1/status") {
      // Asked now, not the cached copy: a caller that just finished a request sees its effect.
      StatusOr<json> live = UnavailableError("no connection");
      if (auto client = TakeClient(); client.ok()) {
        live = (*client)->GetStatus(kStatusTimeout);
        if (live.ok()) ReturnClient(std::move(client).value());
      } else {
        live = client.status();
      }
      if (!live.ok()) {
        ApiError e = MakeError(503, "service_unavailable",
                               "the coordinator at " + Endpoint() + " does not answer: " + live.status().message(),
                               "not_serving");
        e.retry_after_s = 1;
        return ErrorResponse(e);
      }
      json copy = std::move(live).value();
      copy["served_model_name"] = opt.served_model_name;
      copy["max_context"] = MaxContext();
      r.body = copy.dump(-1, ' ', false, json::error_handler_t::replace);
      return r;
    }
    const json model = {{"id", opt.served_model_name},
                        {"object", "model"},
                        {"created", created},
                        {"owned_by", "xcpipe"},
                        {"max_model_len", MaxContext()},
                        {"context_length", MaxContext()},
                        {"architecture", std::string(tokenizer::ChatVersionName(version))}};
    if (target == "/v1/models") {
      r.body = json{{"object", "list"}, {"data", json::array({model})}}.dump();
      return r;
    }
    const std::string id = target.substr(std::string("/v1/models/").size());
    if (id != opt.served_model_name) {
      return ErrorResponse(
          MakeError(404, "not_found_error",
                    "the model '" + id + "' is not served here; GET /v1/models lists '" + opt.served_model_name + "'",
                    "model_not_found"));
    }
    r.body = model.dump();
    return r;
  }

  // ---- chat ----

  struct Prepared {
    coordinator::GenerateRequest request;
    int64_t prompt_tokens = 0;
  };

  std::variant<Prepared, ApiError> Prepare(const ChatCompletionRequest& req) {
    auto conv = BuildConversation(req.messages, version, ChatLimits{256, edge_limits.max_new_tokens, opt.max_images});
    if (auto* e = std::get_if<ApiError>(&conv)) return *e;
    Conversation& c = std::get<Conversation>(conv);
    tokenizer::PromptLimits plimits;
    plimits.max_prompt_bytes = edge_limits.max_prompt_bytes;
    if (Status st = tokenizer::ValidatePromptText(c.chat.query, plimits, "the last user message"); !st.ok()) {
      return BadRequest(st.message(), "messages");
    }
    Prepared out;
    std::vector<int64_t> rows;
    for (size_t i = 0; i < c.image_urls.size(); ++i) {
      MediaPolicy policy{opt.allowed_media_dir, opt.allow_remote_images, opt.max_image_bytes,
                         std::chrono::seconds(opt.remote_image_timeout_s), opt.remote_image_ca_file};
      auto bytes = FetchImage(c.image_urls[i], c.image_params[i], policy);
      if (auto* e = std::get_if<ApiError>(&bytes)) return *e;
      auto rgb = image::DecodeImage(std::get<std::string>(bytes));
      if (!rgb.ok())
        return BadRequest(c.image_params[i] + ": " + rgb.status().message(), c.image_params[i], "invalid_image");
      auto pre = image::PreprocessForModel(*rgb, image_spec);
      if (!pre.ok())
        return BadRequest(c.image_params[i] + ": " + pre.status().message(), c.image_params[i], "invalid_image");
      coordinator::PreparedImage img;
      img.channels = pre->pixel_values.channels;
      img.height = pre->pixel_values.height;
      img.width = pre->pixel_values.width;
      img.grid_h = pre->grid_h;
      img.grid_w = pre->grid_w;
      img.rows = spec.ImageTokens(img.grid_h, img.grid_w);
      img.pixels = std::move(pre->pixel_values.data);
      rows.push_back(img.rows);
      out.request.pixel_images.push_back(std::move(img));
    }
    auto chat = tokenizer::BuildChatPrompt(*tok, version, c.chat);
    if (!chat.ok()) return BadRequest(chat.status().message(), "messages");
    auto ids = chat->ExpandedIds(rows, -1);
    if (!ids.ok()) return BadRequest(ids.status().message(), "messages");
    const int64_t prompt = static_cast<int64_t>(ids->size());
    const int64_t context = MaxContext();
    if (prompt > edge_limits.max_prompt_tokens || prompt >= context) {
      return BadRequest("the prompt is " + std::to_string(prompt) + " tokens (image rows included); the context is " +
                            std::to_string(context) + " tokens, so expected a shorter conversation or fewer images",
                        "messages", "context_length_exceeded");
    }
    int64_t max_new = req.max_tokens ? *req.max_tokens : std::min(opt.default_max_tokens, context - prompt);
    if (prompt + max_new > context) {
      return BadRequest("the prompt (" + std::to_string(prompt) + " tokens) plus max_tokens (" +
                            std::to_string(max_new) + ") exceeds the context of " + std::to_string(context) +
                            " tokens; expected max_tokens <= " + std::to_string(context - prompt),
                        req.max_tokens ? "max_tokens" : "messages", "context_length_exceeded");
    }
    if (req.min_tokens > max_new) {
      return BadRequest("min_tokens (" + std::to_string(req.min_tokens) + ") is more than the " +
                            std::to_string(max_new) + " tokens this request may generate; expected min_tokens <= " +
                            std::to_string(max_new),
                        "min_tokens");
    }
    bool has_images = false;
    out.request.im_mask.resize(ids->size());
    for (size_t t = 0; t < ids->size(); ++t) {
      out.request.im_mask[t] = (*ids)[t] < 0 && spec.arch != checkpoint::ModelArch::kIxc1 ? 1 : 0;
      has_images |= (*ids)[t] < 0;
    }
    if (checkpoint::PenaltyCoversPrompt(spec.arch, has_images))
      out.request.penalty_context = *ids;
    else
      out.request.penalty_context = {spec.llm.bos_id};
    out.request.token_ids = std::move(*ids);
    out.request.max_new_tokens = static_cast<uint32_t>(max_new);
    out.request.sampling.greedy = req.greedy;
    out.request.sampling.temperature = req.greedy ? 1.0 : req.temperature;
    out.request.sampling.top_p = req.top_p;
    out.request.sampling.top_k = req.top_k;
    out.request.sampling.repetition_penalty = req.repetition_penalty;
    out.request.sampling.seed = req.seed ? *req.seed : std::random_device{}();
    out.request.sampling.min_new_tokens = req.min_tokens;
    out.request.sampling.ignore_eos = req.ignore_eos;
    out.request.sampling.num_beams = req.num_beams;
    out.request.sampling.length_penalty = req.length_penalty;
    out.request.sampling.early_stopping = req.early_stopping;
    out.request.sampling.min_length = req.min_length;
    out.prompt_tokens = prompt;
    return out;
  }

  std::optional<ApiError> TakeSlot(int key_index) {
    std::lock_guard<std::mutex> lock(slots_mu);
    if (requests_in_progress >= opt.max_requests) {
      ApiError e = MakeError(
          429, "rate_limit_error",
          "the server has " + std::to_string(requests_in_progress) + " requests in progress, its limit; retry later",
          "busy");
      e.retry_after_s = 1;
      return e;
    }
    if (key_index >= 0 && per_key[key_index] >= opt.max_requests_per_key) {
      ApiError e = MakeError(
          429, "rate_limit_error",
          "this API key has " + std::to_string(per_key[key_index]) + " requests in progress, its limit; retry later",
          "key_busy");
      e.retry_after_s = 1;
      return e;
    }
    ++requests_in_progress;
    if (key_index >= 0) ++per_key[key_index];
    return std::nullopt;
  }
  void ReleaseSlot(int key_index) {
    std::lock_guard<std::mutex> lock(slots_mu);
    --requests_in_progress;
    if (key_index >= 0) --per_key[key_index];
  }

  // Returns false when the connection must close (write failed, or the client went away).
  bool HandleChat(int fd, const std::string& body, int key_index, unsigned version_http, bool* keep_alive,
                  int* status_out) {
    auto reply_error = [&](const ApiError& e) {
      *status_out = e.status;
      return WriteResponse(fd, ErrorResponse(e), *keep_alive, version_http);
    };
    auto parsed = ParseChatCompletionRequest(body, ChatLimits{256, edge_limits.max_new_tokens, opt.max_images});
    if (auto* e = std::get_if<ApiError>(&parsed)) return reply_error(*e);
    const ChatCompletionRequest& req = std::get<ChatCompletionRequest>(parsed);
    if (!req.model.empty() && req.model != opt.served_model_name) {
      ApiError e = MakeError(
          404, "not_found_error",
          "the model '" + req.model + "' is not served here; GET /v1/models lists '" + opt.served_model_name + "'",
          "model_not_found");
      e.param = "model";
      return reply_error(e);
    }
    if (auto reason = NotServingReason()) {
      ApiError e = MakeError(503, "service_unavailable", *reason + "; retry later", "not_serving");
      e.retry_after_s = 1;
      return reply_error(e);
    }
    auto prepared = Prepare(req);
    if (auto* e = std::get_if<ApiError>(&prepared)) return reply_error(*e);
    Prepared& p = std::get<Prepared>(prepared);
    if (auto e = TakeSlot(key_index)) return reply_error(*e);
    struct SlotGuard {
      Impl* impl;
      int key;
      ~SlotGuard() { impl->ReleaseSlot(key); }
    } slot{this, key_index};

    auto client = TakeClient();
    if (!client.ok()) {
      ApiError e = ErrorFromStatus(UnavailableError("cannot reach the coordinator: " + client.status().message()));
      return reply_error(e);
    }
    const std::string id = "chatcmpl-" + RandomHex(24);
    const int64_t created_at = static_cast<int64_t>(std::time(nullptr));
    TextStream text(req.stop);
    bool headers_sent = false, write_failed = false, gone = false;
    const auto write_deadline = [&] { return Clock::now() + std::chrono::seconds(opt.write_timeout_s); };
    auto chunk = [&](json choices, const json* usage) {
      json c = {{"id", id},
                {"object", "chat.completion.chunk"},
                {"created", created_at},
                {"model", opt.served_model_name},
                {"choices", std::move(choices)}};
      if (req.include_usage) c["usage"] = usage ? *usage : json(nullptr);
      return c.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    auto send_event = [&](const std::string& data) {
      if (write_failed) return false;
      const std::string event = "data: " + data + "\n\n";
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", event.size());
      if (!WriteAll(fd, std::string(size) + event + "\r\n", write_deadline())) write_failed = true;
      return !write_failed;
    };
    auto start_stream = [&] {
      if (headers_sent) return;
      headers_sent = true;
      const std::string head =
          "HTTP/1.1 200 OK\r\nServer: xcpipe\r\nContent-Type: text/event-stream\r\n"
          "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: " +
          std::string(*keep_alive ? "keep-alive" : "close") + "\r\n\r\n";
      if (!WriteAll(fd, head, write_deadline())) {
        write_failed = true;
        return;
      }
      send_event(chunk(json::array({{{"index", 0},
                                     {"delta", {{"role", "assistant"}, {"content", ""}}},
                                     {"logprobs", nullptr},
                                     {"finish_reason", nullptr}}}),
                       nullptr));
    };
    auto send_text = [&](const std::string& t) {
      if (t.empty()) return;
      start_stream();
      send_event(chunk(
          json::array({{{"index", 0}, {"delta", {{"content", t}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}),
          nullptr));
    };
    p.request.cancelled = [&] {
      if (text.stopped() || write_failed || stopping) return true;
      if (PeerGone(fd)) gone = true;
      return gone;
    };
    auto on_text = [&](uint32_t, const std::string& delta) {
      const std::string now = text.Push(delta);
      if (req.stream) send_text(now);
    };
    auto result = (*client)->Generate(p.request, std::chrono::seconds(opt.request_timeout_s), on_text);
    const bool cancelled =
        text.stopped() || write_failed || gone || (result.ok() && result->error.rfind("Cancelled", 0) == 0);
    if (result.ok() && !cancelled) ReturnClient(std::move(client).value());
    // else: the Client is dropped here; its closed connection cancels the request.
    if (gone || write_failed) {
      *status_out = 499;  // nginx's "client closed request": logged only
      return false;
    }
    Status failure = OkStatus();
    if (!result.ok())
      failure = result.status();
    else if (!result->error.empty() && !text.stopped())
      failure = StatusFromResultError(result->error);
    if (!failure.ok()) {
      ApiError e = ErrorFromStatus(failure);
      if (!headers_sent) return reply_error(e);
      *status_out = e.status;
      send_event(json{{"error", json::parse(RenderErrorBody(e))["error"]}}.dump(-1, ' ', false,
                                                                                json::error_handler_t::replace));
      send_event("[DONE]");
      return !write_failed && WriteAll(fd, "0\r\n\r\n", write_deadline());
    }
    const std::string rest = text.Finish();
    std::string finish = text.stopped() ? "stop" : result->finish_reasons.empty() ? "stop" : result->finish_reasons[0];
    if (finish != "length") finish = "stop";
    const int64_t completion = result->token_ids.empty() ? 0 : static_cast<int64_t>(result->token_ids[0].size());
    const json usage = {{"prompt_tokens", p.prompt_tokens},
                        {"completion_tokens", completion},
                        {"total_tokens", p.prompt_tokens + completion}};
    *status_out = 200;
    if (!req.stream) {
      Response r;
      r.body = json{
          {"id", id},
          {"object", "chat.completion"},
          {"created", created_at},
          {"model", opt.served_model_name},
          {"choices", json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", text.sent()}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", finish}}})},
          {"usage",
           usage}}.dump(-1, ' ', false, json::error_handler_t::replace);
      return WriteResponse(fd, r, *keep_alive, version_http);
    }
    send_text(rest);
    start_stream();
    send_event(chunk(
        json::array({{{"index", 0}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish}}}),
        nullptr));
    if (req.include_usage) send_event(chunk(json::array(), &usage));
    send_event("[DONE]");
    return !write_failed && WriteAll(fd, "0\r\n\r\n", write_deadline());
  }
};

StatusOr<std::unique_ptr<Gateway>> Gateway::Start(const GatewayOptions& options, GatewayBackend backend) {
  std::unique_ptr<Gateway> g(new Gateway());
  g->impl_ = std::make_unique<Impl>();
  Impl& impl = *g->impl_;
  impl.opt = options;
  impl.backend = std::move(backend);
  impl.endpoint = LocalEndpointFor(impl.backend.coordinator_endpoint);
  impl.created = static_cast<int64_t>(std::time(nullptr));
  if (impl.opt.served_model_name.empty()) {
    impl.opt.served_model_name =
        std::filesystem::absolute(impl.backend.model_dir).lexically_normal().filename().string();
    if (impl.opt.served_model_name.empty()) {
      impl.opt.served_model_name =
          std::filesystem::absolute(impl.backend.model_dir).lexically_normal().parent_path().filename().string();
    }
  }

  // Keys first: a misconfigured server must not start.
  if (!impl.opt.api_key_file.empty()) {
    std::ifstream in(impl.opt.api_key_file);
    if (!in) return InvalidArgumentError("cannot read the API key file " + impl.opt.api_key_file.string());
    std::string line;
    while (std::getline(in, line)) {
      while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
      size_t s = 0;
      while (s < line.size() && std::isspace(static_cast<unsigned char>(line[s]))) ++s;
      line.erase(0, s);
      if (line.empty() || line[0] == '#') continue;
      if (line.size() < 16) {
        return InvalidArgumentError("the API key file " + impl.opt.api_key_file.string() +
                                    " holds a key shorter than 16 characters; expected long random keys");
      }
      impl.keys.push_back(line);
    }
    if (impl.keys.empty()) {
      return InvalidArgumentError("the API key file " + impl.opt.api_key_file.string() + " holds no key");
    }
  }

  const std::string& listen = impl.opt.listen;
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return InvalidArgumentError("--http-listen '" + listen + "' is not HOST:PORT (e.g. 127.0.0.1:8000)");
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return InvalidArgumentError("--http-listen '" + listen + "': " + ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addrs(found, &::freeaddrinfo);
  sockaddr_storage bound_addr{};
  std::memcpy(&bound_addr, found->ai_addr, found->ai_addrlen);
  if (impl.keys.empty() && !impl.opt.allow_unauthenticated && !IsLoopback(bound_addr)) {
    return InvalidArgumentError("refusing to serve HTTP on " + listen +
                                " without API keys: anyone who can reach it could use the cluster; pass "
                                "--api-key-file, listen on 127.0.0.1, or pass --allow-unauthenticated");
  }

  // Everything the edge needs to turn messages into token ids.
  auto described = checkpoint::DescribeCheckpoint(impl.backend.model_dir);
  if (!described.ok()) return described.status().WithContext("http gateway");
  impl.spec = described->spec;
  auto image_spec = image::DetectModelImageSpec(impl.backend.model_dir);
  if (!image_spec.ok()) return image_spec.status().WithContext("http gateway");
  impl.image_spec = *image_spec;
  std::filesystem::path tok_path = impl.backend.tokenizer;
  if (tok_path.empty()) {
    auto t = coordinator::FindTokenizer(impl.backend.model_dir);
    if (!t.ok()) return t.status();
    tok_path = *t;
  }
  auto tok = tokenizer::Tokenizer::LoadFromFile(tok_path);
  if (!tok.ok()) return tok.status().WithContext("http gateway");
  impl.tok = std::move(tok).value();
  impl.version = coordinator::ChatVersionFor(impl.spec.arch);
  impl.edge_limits.max_images = impl.opt.max_images;

  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return UnavailableError("cannot create the HTTP socket: " + std::string(std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd, 512) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return UnavailableError("cannot listen for HTTP on " + listen + ": " + why);
  }
  impl.listen_fd = fd;
  sockaddr_storage actual{};
  socklen_t len = sizeof actual;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&actual), &len);
  char text[INET6_ADDRSTRLEN] = {0};
  unsigned short actual_port = 0;
  if (actual.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(actual);
    ::inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof text);
    actual_port = ntohs(a.sin6_port);
    g->address_ = "[" + std::string(text) + "]:" + std::to_string(actual_port);
  } else {
    const auto& a = reinterpret_cast<const sockaddr_in&>(actual);
    ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
    actual_port = ntohs(a.sin_port);
    g->address_ = std::string(text) + ":" + std::to_string(actual_port);
  }
  impl.accept_thread = std::thread([&impl] { impl.AcceptLoop(); });
  impl.status_thread = std::thread([&impl] { impl.StatusLoop(); });
  spdlog::info("http: OpenAI-compatible API on http://{}/v1 (model '{}', {})", g->address_, impl.opt.served_model_name,
               impl.keys.empty() ? "no API keys" : std::to_string(impl.keys.size()) + " API key(s)");
  return g;
}

void Gateway::SetCoordinatorEndpoint(const std::string& endpoint) {
  {
    std::lock_guard<std::mutex> lock(impl_->endpoint_mu);
    impl_->endpoint = LocalEndpointFor(endpoint);
  }
  std::lock_guard<std::mutex> lock(impl_->status_mu);
  impl_->refresh_now = true;
  impl_->status_cv.notify_all();
}

Gateway::~Gateway() {
  if (!impl_) return;
  impl_->stopping = true;
  impl_->status_cv.notify_all();
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
  {
    std::lock_guard<std::mutex> lock(impl_->conn_mu);
    for (auto& c : impl_->connections) {
      if (!c.done) ::shutdown(c.fd, SHUT_RDWR);
    }
  }
  for (auto& c : impl_->connections) {
    if (c.thread.joinable()) c.thread.join();
  }
  if (impl_->status_thread.joinable()) impl_->status_thread.join();
  if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
}

}  // namespace xcpipe::http
