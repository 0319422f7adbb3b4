// The gateway's HTTP edge over real sockets, without a cluster: who may bind where, API keys,
// the limits on headers, bodies, read time and connections, keep-alive, 100-continue, and the
// 503 it answers while no coordinator serves. (With a cluster: tests/http/*.cjs.)
#include "xcpipe/http/gateway.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "xcpipe/mkmodel/model_generator.h"

namespace xcpipe::http {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class Connection {
 public:
  explicit Connection(const std::string& address) {
    const auto colon = address.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
    inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Connection() { ::close(fd_); }
  bool connected() const { return connected_; }
  void Send(const std::string& data) {
    ASSERT_EQ(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL), static_cast<ssize_t>(data.size()));
  }
  // Reads until `until` appears, the peer closes, or `timeout` passes.
  std::string Read(std::chrono::milliseconds timeout, const std::string& until = "") {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (!until.empty() && got_.find(until) != std::string::npos) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      got_.append(buf, static_cast<size_t>(n));
    }
    return got_;
  }
  bool closed() const { return closed_; }
  void Clear() { got_.clear(); }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string got_;
};

// One request on a fresh connection; the whole answer (the server closes or the body is complete).
std::string Exchange(const std::string& address, const std::string& request, std::chrono::milliseconds timeout = 5s) {
  Connection c(address);
  c.Send(request);
  return c.Read(timeout);
}

int StatusOf(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0) return -1;
  return std::stoi(response.substr(9, 3));
}

nlohmann::json BodyOf(const std::string& response) {
  const auto at = response.find("\r\n\r\n");
  return nlohmann::json::parse(response.substr(at + 4), nullptr, false);
}

class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("xcpipe-gateway-test-" + std::to_string(getpid())));
    auto model = mkmodel::GenerateModel(mkmodel::GeneratorOptions{}, *dir_ / "model");
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    std::ofstream(*dir_ / "keys") << "# test keys\n  key-number-one-0123456789  \n\nkey-number-two-0123456789\n";
    std::ofstream(*dir_ / "short-keys") << "short\n";
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }

  // A gateway whose coordinator does not exist (nothing listens on port 1).
  static std::unique_ptr<Gateway> Start(GatewayOptions o, Status* status = nullptr) {
    if (o.listen.empty()) o.listen = "127.0.0.1:0";
    GatewayBackend backend{"tcp://127.0.0.1:1", {}, *dir_ / "model", {}, 4096};
    auto g = Gateway::Start(o, std::move(backend));
    if (status) *status = g.status();
    return g.ok() ? std::move(g).value() : nullptr;
  }

  static fs::path* dir_;
};
fs::path* GatewayTest::dir_ = nullptr;

TEST_F(GatewayTest, WithoutKeysOnlyLoopbackUnlessAllowed) {
  GatewayOptions o;
  o.listen = "0.0.0.0:0";
  Status st;
  EXPECT_EQ(Start(o, &st), nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("without API keys"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("--api-key-file"), std::string::npos);
  o.allow_unauthenticated = true;
  EXPECT_NE(Start(o), nullptr);
  o.allow_unauthenticated = false;
  o.api_key_file = *dir_ / "keys";
  EXPECT_NE(Start(o), nullptr);
  o.listen = "[::1]:0";
  o.api_key_file.clear();
  EXPECT_NE(Start(o), nullptr) << "::1 is loopback";
}

TEST_F(GatewayTest, BadKeyFileOrAddressRefusedAtStart) {
  GatewayOptions o;
  o.api_key_file = *dir_ / "short-keys";
  Status st;
  EXPECT_EQ(Start(o, &st), nullptr);
  EXPECT_NE(st.message().find("shorter than 16"), std::string::npos) << st.message();
  o.api_key_file = *dir_ / "missing";
  EXPECT_EQ(Start(o, &st), nullptr);
  EXPECT_NE(st.message().find("cannot read the API key file"), std::string::npos);
  GatewayOptions bad;
  bad.listen = "no-port";
  EXPECT_EQ(Start(bad, &st), nullptr);
  EXPECT_NE(st.message().find("is not HOST:PORT"), std::string::npos);
}

TEST_F(GatewayTest, KeysRoutesAndMethods) {
  GatewayOptions o;
  o.api_key_file = *dir_ / "keys";
  auto g = Start(o);
  ASSERT_NE(g, nullptr);
  const std::string a = g->address();
  auto no_key = Exchange(a, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(no_key), 401);
  EXPECT_NE(no_key.find("WWW-Authenticate: Bearer"), std::string::npos);
  EXPECT_EQ(BodyOf(no_key)["error"]["code"], "missing_api_key");
  auto wrong = Exchange(
      a, "GET /v1/models HTTP/1.1\r\nAuthorization: Bearer key-number-one-012345678X\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(wrong), 401);
  EXPECT_EQ(BodyOf(wrong)["error"]["code"], "invalid_api_key");
  for (const char* key : {"key-number-one-0123456789", "key-number-two-0123456789"}) {
    auto ok = Exchange(
        a, std::string("GET /v1/models HTTP/1.1\r\nAuthorization: Bearer ") + key + "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(StatusOf(ok), 200) << ok;
    EXPECT_EQ(BodyOf(ok)["data"][0]["id"], "model");
  }
  // The console and /health need no key.
  EXPECT_EQ(StatusOf(Exchange(a, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")), 200);
  auto path = Exchange(a, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(path), 404);
  EXPECT_NE(BodyOf(path)["error"]["message"].get<std::string>().find("POST /v1/chat/completions"), std::string::npos);
  auto method = Exchange(a, "DELETE /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(method), 405);
  EXPECT_NE(method.find("Allow: GET, HEAD"), std::string::npos);
}

TEST_F(GatewayTest, NotServingIs503WithAReason) {
  auto g = Start({});
  ASSERT_NE(g, nullptr);
  auto health = Exchange(g->address(), "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(StatusOf(health), 503);
  EXPECT_EQ(BodyOf(health)["status"], "unavailable");
  EXPECT_FALSE(BodyOf(health)["reason"].get<std::string>().empty());
  const std::string body = R"({"messages":[{"role":"user","content":"hi"}]})";
  auto chat = Exchange(g->address(),
                       "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
  EXPECT_EQ(StatusOf(chat), 503) << chat;
  EXPECT_NE(chat.find("Retry-After: 1"), std::string::npos);
  EXPECT_EQ(BodyOf(chat)["error"]["type"], "service_unavailable");
  // A bad request is still a 400 (it is checked before the cluster is asked).
  const std::string bad = R"({"messages":[{"role":"user","content":"hi"}],"n":3})";
  auto refused =
      Exchange(g->address(), "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: " + std::to_string(bad.size()) +
                                 "\r\nConnection: close\r\n\r\n" + bad);
  EXPECT_EQ(StatusOf(refused), 400);
  EXPECT_EQ(BodyOf(refused)["error"]["param"], "n");
}

TEST_F(GatewayTest, HeaderAndBodyLimits) {
  GatewayOptions o;
  o.max_body_bytes = 1000;
  o.max_header_bytes = 2048;
  auto g = Start(o);
  ASSERT_NE(g, nullptr);
  auto big_header = Exchange(g->address(), "GET /health HTTP/1.1\r\nX-Filler: " + std::string(4000, 'a') + "\r\n\r\n");
  EXPECT_EQ(StatusOf(big_header), 431) << big_header.substr(0, 200);
  // Refused from the declared length, before any of the body is read.
  Connection c(g->address());
  c.Send("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
  auto big_body = c.Read(5s);
  EXPECT_EQ(StatusOf(big_body), 413) << big_body;
  EXPECT_NE(BodyOf(big_body)["error"]["message"].get<std::string>().find("exceeds 1000 bytes"), std::string::npos);
  EXPECT_TRUE(c.closed());
}

TEST_F(GatewayTest, SlowHeaderTimesOut) {
  GatewayOptions o;
  o.header_timeout_s = 1;
  auto g = Start(o);
  ASSERT_NE(g, nullptr);
  Connection c(g->address());
  c.Send("GET /health HTTP/1.1\r\nHost:");
  const auto t0 = std::chrono::steady_clock::now();
  auto out = c.Read(5s);
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(StatusOf(out), 408) << out;
  EXPECT_TRUE(c.closed());
  EXPECT_LT(waited, 3s);
  // A connection that sends nothing is closed too.
  Connection silent(g->address());
  silent.Read(3s);
  EXPECT_TRUE(silent.closed());
}

TEST_F(GatewayTest, ConnectionLimitKeepAliveAndContinue) {
  GatewayOptions o;
  o.max_connections = 2;
  o.header_timeout_s = 3;
  auto g = Start(o);
  ASSERT_NE(g, nullptr);
  {
    // Two requests on one connection.
    Connection c(g->address());
    c.Send("GET /health HTTP/1.1\r\n\r\n");
    auto first = c.Read(5s, "}");
    EXPECT_EQ(StatusOf(first), 503);
    EXPECT_NE(first.find("Connection: keep-alive"), std::string::npos);
    c.Clear();
    c.Send("GET /v1/models HTTP/1.1\r\n\r\n");
    auto second = c.Read(5s, "}]}");
    EXPECT_EQ(StatusOf(second), 200) << second;
    EXPECT_FALSE(c.closed());
    // Expect: 100-continue is answered before the body is sent.
    c.Clear();
    const std::string body = R"({"messages":[]})";
    c.Send("POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n");
    EXPECT_EQ(c.Read(5s, "\r\n\r\n").rfind("HTTP/1.1 100 Continue\r\n\r\n", 0), 0u);
    c.Clear();
    c.Send(body);
    EXPECT_EQ(StatusOf(c.Read(5s, "}}")), 400);
  }
  std::this_thread::sleep_for(300ms);  // the closed connection's thread is reaped
  Connection one(g->address()), two(g->address());
  std::this_thread::sleep_for(300ms);
  auto third = Exchange(g->address(), "GET /health HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusOf(third), 429) << third;
  EXPECT_NE(third.find("Retry-After: 1"), std::string::npos);
  EXPECT_EQ(BodyOf(third)["error"]["code"], "too_many_connections");
}

}  // namespace
}  // namespace xcpipe::http
