// CURVE on real ZeroMQ sockets over loopback TCP, and the key files.
#include "xcpipe/control/curve.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "xcpipe/control/socket.h"

namespace xcpipe::control {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// How long a refused peer is given to (not) deliver a message: several reconnect attempts.
constexpr auto kRefusalWindow = 1500ms;

CurveKeyPair Keys() {
  auto k = GenerateKeyPair();
  EXPECT_TRUE(k.ok()) << k.status().ToString();
  return k.ok() ? *k : CurveKeyPair{};
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "xcpipe-curve-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

// A CURVE server allowing `allowed`, and a way to connect dealers to it.
struct Server {
  zmq::context_t context;
  CurveKeyPair keys = Keys();
  std::unique_ptr<ControlSocket> router;
  explicit Server(std::set<std::string> allowed) {
    CurveConfig c{keys.public_key, keys.secret_key, "", std::move(allowed)};
    auto r = ControlSocket::BindRouter(context, "tcp://127.0.0.1:*", false, c);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok()) router = std::move(r).value();
  }
};

std::string HelloBytes(const std::string& worker_id) {
  capnp::MallocMessageBuilder m;
  auto h = m.initRoot<proto::Envelope>().initHello();
  h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  h.setWorkerId(worker_id);
  return wire::Encode(m);
}

// Connects a dealer (own context: a separate process's view) and sends one hello.
struct Peer {
  zmq::context_t context;
  std::unique_ptr<ControlSocket> dealer;
  Peer(const std::string& endpoint, const CurveConfig& curve) {
    auto d = ControlSocket::ConnectDealer(context, endpoint, "peer-1", curve);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (!d.ok()) return;
    dealer = std::move(d).value();
    EXPECT_TRUE(dealer->SendBytes(HelloBytes("peer")).ok());
  }
};

TEST(CurveSocketTest, AllowedKeyRoundTrip) {
  const CurveKeyPair client = Keys();
  Server server({client.public_key});
  ASSERT_NE(server.router, nullptr);
  ASSERT_NE(server.router->zap(), nullptr);
  Peer peer(server.router->last_endpoint(), {client.public_key, client.secret_key, server.keys.public_key, {}});
  ASSERT_NE(peer.dealer, nullptr);
  auto in = server.router->Receive(5000ms);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(in->has_value()) << "no message from an allowed peer";
  EXPECT_EQ((*in)->peer, "peer-1");
  EXPECT_EQ(std::string((*in)->message->envelope().getHello().getWorkerId().cStr()), "peer");
  // And back, over the same encrypted link.
  ASSERT_TRUE(server.router->SendBytes(HelloBytes("coordinator"), "peer-1").ok());
  auto back = peer.dealer->Receive(5000ms);
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ(std::string((*back)->message->envelope().getHello().getWorkerId().cStr()), "coordinator");
  EXPECT_GE(server.router->zap()->accepted(), 1u);
  EXPECT_EQ(server.router->zap()->refused(), 0u);
}

TEST(CurveSocketTest, UnknownKeyIsRefused) {
  const CurveKeyPair allowed = Keys(), stranger = Keys();
  Server server({allowed.public_key});
  ASSERT_NE(server.router, nullptr);
  Peer peer(server.router->last_endpoint(), {stranger.public_key, stranger.secret_key, server.keys.public_key, {}});
  auto in = server.router->Receive(kRefusalWindow);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_FALSE(in->has_value()) << "a peer with an unknown key delivered a message";
  EXPECT_GE(server.router->zap()->refused(), 1u);
  EXPECT_EQ(server.router->zap()->accepted(), 0u);
}

TEST(CurveSocketTest, PlainClientIsRefusedByCurveServer) {
  Server server({Keys().public_key});
  ASSERT_NE(server.router, nullptr);
  Peer peer(server.router->last_endpoint(), {});
  auto in = server.router->Receive(kRefusalWindow);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_FALSE(in->has_value()) << "a plain (unauthenticated) peer delivered a message";
  EXPECT_EQ(server.router->zap()->accepted(), 0u);
}

TEST(CurveSocketTest, WrongServerKeyCarriesNoTraffic) {
  const CurveKeyPair client = Keys();
  Server server({client.public_key});
  ASSERT_NE(server.router, nullptr);
  // The client believes the server has another key (a man in the middle, a stale file).
  Peer peer(server.router->last_endpoint(), {client.public_key, client.secret_key, Keys().public_key, {}});
  auto in = server.router->Receive(kRefusalWindow);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_FALSE(in->has_value());
  EXPECT_EQ(server.router->zap()->accepted(), 0u);
}

TEST(CurveSocketTest, CurveClientCannotTalkToPlainServer) {
  zmq::context_t context;
  auto router = ControlSocket::BindRouter(context, "tcp://127.0.0.1:*");
  ASSERT_TRUE(router.ok());
  const CurveKeyPair client = Keys();
  Peer peer((*router)->last_endpoint(), {client.public_key, client.secret_key, Keys().public_key, {}});
  auto in = (*router)->Receive(kRefusalWindow);
  ASSERT_TRUE(in.ok());
  EXPECT_FALSE(in->has_value());
}

TEST(CurveSocketTest, ServerWithoutAllowListIsRefused) {
  zmq::context_t context;
  const CurveKeyPair k = Keys();
  auto r = ControlSocket::BindRouter(context, "tcp://127.0.0.1:*", false, {k.public_key, k.secret_key, "", {}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("allow-list"), std::string::npos) << r.status().ToString();
}

TEST(CurveKeysTest, Z85Validation) {
  const CurveKeyPair k = Keys();
  EXPECT_TRUE(ValidateZ85Key(k.public_key, "key").ok());
  auto short_key = ValidateZ85Key(k.public_key.substr(1), "peer.pub");
  EXPECT_FALSE(short_key.ok());
  EXPECT_NE(short_key.message().find("peer.pub: expected a 40-character Z85 key, got 39"), std::string::npos)
      << short_key.ToString();
  std::string bad = k.public_key;
  bad[5] = '"';  // not in the Z85 alphabet
  auto bad_char = ValidateZ85Key(bad, "peer.pub");
  EXPECT_FALSE(bad_char.ok());
  EXPECT_NE(bad_char.message().find("character 6"), std::string::npos) << bad_char.ToString();
  auto derived = DerivePublicKey(k.secret_key);
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(*derived, k.public_key);
}

TEST(CurveKeysTest, WriteKeyPairModesAndOverwrite) {
  TempDir dir;
  const CurveKeyPair k = Keys();
  ASSERT_TRUE(WriteKeyPair(k, dir.path / "keys", "node-a", false).ok());
  struct stat st {};
  ASSERT_EQ(::stat((dir.path / "keys" / "node-a.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir.path / "keys").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u) << "a fresh key folder must be private";
  auto secret = ReadSecretKeyFile(dir.path / "keys" / "node-a.key");
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(*secret, k.secret_key);
  auto pub = ReadPublicKeyFile(dir.path / "keys" / "node-a.pub");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(*pub, k.public_key);

  const CurveKeyPair other = Keys();
  auto again = WriteKeyPair(other, dir.path / "keys", "node-a", false);
  EXPECT_FALSE(again.ok());
  EXPECT_NE(again.message().find("already exists"), std::string::npos);
  EXPECT_EQ(*ReadSecretKeyFile(dir.path / "keys" / "node-a.key"), k.secret_key) << "refused, yet overwritten";
  // Replacing an old world-readable file still yields 0600.
  ::chmod((dir.path / "keys" / "node-a.key").c_str(), 0644);
  ASSERT_TRUE(WriteKeyPair(other, dir.path / "keys", "node-a", true).ok());
  ASSERT_EQ(::stat((dir.path / "keys" / "node-a.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(*ReadSecretKeyFile(dir.path / "keys" / "node-a.key"), other.secret_key);
}

TEST(CurveKeysTest, SecretKeyReadableByOthersIsRefused) {
  TempDir dir;
  ASSERT_TRUE(WriteKeyPair(Keys(), dir.path, "w", false).ok());
  const fs::path secret = dir.path / "w.key";
  ::chmod(secret.c_str(), 0640);
  auto r = ReadSecretKeyFile(secret);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(r.status().message().find("mode 0640"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("chmod 600"), std::string::npos) << r.status().ToString();
}

TEST(CurveKeysTest, MalformedKeyFilesNameTheFileButNotTheSecret) {
  TempDir dir;
  const CurveKeyPair k = Keys();
  const fs::path two = dir.path / "two.pub";
  std::ofstream(two) << k.public_key << "\n" << k.public_key << "\n";
  auto r = ReadPublicKeyFile(two);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(two.string() + ": expected exactly one 40-character Z85 key line, found 2"),
            std::string::npos)
      << r.status().ToString();
  // A truncated secret: the error must not echo what is in the file.
  const fs::path secret = dir.path / "cut.key";
  {
    std::ofstream(secret) << k.secret_key.substr(0, 30) << "\n";
  }
  ::chmod(secret.c_str(), 0600);
  auto s = ReadSecretKeyFile(secret);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("expected a 40-character Z85 key, got 30"), std::string::npos)
      << s.status().ToString();
  EXPECT_EQ(s.status().message().find(k.secret_key.substr(0, 10)), std::string::npos) << "secret leaked";
}

TEST(CurveKeysTest, AllowListFromFolderOrFile) {
  TempDir dir;
  const CurveKeyPair a = Keys(), b = Keys();
  ASSERT_TRUE(WriteKeyPair(a, dir.path / "allow", "a", false).ok());
  ASSERT_TRUE(WriteKeyPair(b, dir.path / "allow", "b", false).ok());
  auto from_dir = ReadAllowList(dir.path / "allow");
  ASSERT_TRUE(from_dir.ok()) << from_dir.status().ToString();
  EXPECT_EQ(*from_dir, (std::set<std::string>{a.public_key, b.public_key}));  // *.key files ignored

  const fs::path file = dir.path / "allowed_keys";
  std::ofstream(file) << "# workers\n" << a.public_key << "\n\n  " << b.public_key << "  \n";
  auto from_file = ReadAllowList(file);
  ASSERT_TRUE(from_file.ok()) << from_file.status().ToString();
  EXPECT_EQ(*from_file, (std::set<std::string>{a.public_key, b.public_key}));

  std::ofstream(file) << a.public_key << "\nnot-a-key\n";
  auto bad = ReadAllowList(file);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status().ToString();

  std::ofstream(file) << "# nobody\n";
  EXPECT_FALSE(ReadAllowList(file).ok());
}

TEST(CurveKeysTest, FlagsMustComeAsAPair) {
  EXPECT_FALSE(CurveFromFlags("", "", "", true)->enabled());
  EXPECT_FALSE(CurveFromFlags("", "", "", false)->enabled());
  auto half = CurveFromFlags("x.key", "", "", false);
  ASSERT_FALSE(half.ok());
  EXPECT_NE(half.status().message().find("--server-key"), std::string::npos);
  auto wrong = CurveFromFlags("x.key", "c.pub", "", true);
  ASSERT_FALSE(wrong.ok());

  TempDir dir;
  ASSERT_TRUE(WriteClusterKeys(dir.path).ok());
  auto server = CurveFromFlags((dir.path / "coordinator.key").string(), "", dir.path.string(), true);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto client = CurveFromFlags((dir.path / "client.key").string(), (dir.path / "coordinator.pub").string(), "", false);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_EQ(client->server_public_key, server->public_key);
  EXPECT_EQ(server->allowed_keys.count(client->public_key), 1u);
}

}  // namespace
}  // namespace xcpipe::control
