// Real ZeroMQ sockets over loopback TCP.
#include "xcpipe/control/socket.h"

#include <gtest/gtest.h>

namespace xcpipe::control {
namespace {

using namespace std::chrono_literals;

struct Pair {
  zmq::context_t context;
  std::unique_ptr<ControlSocket> router, dealer;
};

std::unique_ptr<Pair> MakePair(const std::string& identity = "worker-1") {
  auto p = std::make_unique<Pair>();
  auto r = ControlSocket::BindRouter(p->context, "tcp://127.0.0.1:*");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  p->router = std::move(r).value();
  auto d = ControlSocket::ConnectDealer(p->context, p->router->last_endpoint(), identity);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  p->dealer = std::move(d).value();
  return p;
}

TEST(ControlSocketTest, HelloAndWelcomeRoundTrip) {
  auto p = MakePair();
  capnp::MallocMessageBuilder hello;
  auto h = hello.initRoot<proto::Envelope>().initHello();
  h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  h.setWorkerId("node-a/0");
  ASSERT_TRUE(p->dealer->Send(hello).ok());

  auto in = p->router->Receive(2000ms);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(in->has_value());
  EXPECT_EQ((*in)->peer, "worker-1");
  ASSERT_EQ((*in)->message->envelope().which(), proto::Envelope::HELLO);
  EXPECT_EQ(std::string((*in)->message->envelope().getHello().getWorkerId().cStr()), "node-a/0");

  capnp::MallocMessageBuilder welcome;
  welcome.initRoot<proto::Envelope>().initWelcome().setEpoch(7);
  ASSERT_TRUE(p->router->Send(welcome, "worker-1").ok());
  auto back = p->dealer->Receive(2000ms);
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ((*back)->message->envelope().getWelcome().getEpoch(), 7u);
}

TEST(ControlSocketTest, ReceiveTimesOutWithNothing) {
  auto p = MakePair();
  auto in = p->router->Receive(20ms);
  ASSERT_TRUE(in.ok());
  EXPECT_FALSE(in->has_value());
}

TEST(ControlSocketTest, SendingToAnUnknownPeerFailsInsteadOfVanishing) {
  auto p = MakePair();
  capnp::MallocMessageBuilder m;
  m.initRoot<proto::Envelope>().initHeartbeat();
  Status st = p->router->Send(m, "nobody");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("nobody"), std::string::npos);
}

TEST(ControlSocketTest, MalformedBytesAreAnErrorNamingTheSender) {
  auto p = MakePair("client-9");
  ASSERT_TRUE(p->dealer->SendBytes(std::string(13, 'x')).ok());
  auto in = p->router->Receive(2000ms);
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(in.status().message().find("client-9"), std::string::npos);
  // The socket keeps working for the next, valid message.
  capnp::MallocMessageBuilder m;
  m.initRoot<proto::Envelope>().initHeartbeat().setSequence(3);
  ASSERT_TRUE(p->dealer->Send(m).ok());
  auto next = p->router->Receive(2000ms);
  ASSERT_TRUE(next.ok() && next->has_value());
  EXPECT_EQ((*next)->message->envelope().getHeartbeat().getSequence(), 3u);
}

TEST(ControlSocketTest, WildcardBindIsRefusedByDefault) {
  zmq::context_t context;
  auto r = ControlSocket::BindRouter(context, "tcp://*:0");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("every interface"), std::string::npos);
  EXPECT_TRUE(IsWildcardEndpoint("tcp://0.0.0.0:7000"));
  EXPECT_FALSE(IsWildcardEndpoint("tcp://127.0.0.1:7000"));
}

TEST(ControlSocketTest, AddressInUseIsUnavailable) {
  zmq::context_t context;
  auto a = ControlSocket::BindRouter(context, "tcp://127.0.0.1:*");
  ASSERT_TRUE(a.ok());
  auto b = ControlSocket::BindRouter(context, (*a)->last_endpoint());
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace xcpipe::control
