// The control plane's fault-injection rules: which socket, direction, message and occurrence.
#include "xcpipe/control/message_dropper.h"

#include <gtest/gtest.h>

#include "xcpipe/control/socket.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::control {
namespace {

using Dir = MessageDropper::Direction;

TEST(MessageDropper, DropsOnlyTheNthMatchingMessageOfTheNamedSocket) {
  auto router = MessageDropper::Parse("router:send:forward:2,dealer:local-1:recv:forward:1", true, "");
  ASSERT_NE(router, nullptr);
  EXPECT_FALSE(router->ShouldDrop(Dir::kSend, "forward"));
  EXPECT_FALSE(router->ShouldDrop(Dir::kSend, "heartbeat"));
  EXPECT_FALSE(router->ShouldDrop(Dir::kReceive, "forward"));
  EXPECT_TRUE(router->ShouldDrop(Dir::kSend, "forward"));
  EXPECT_FALSE(router->ShouldDrop(Dir::kSend, "forward"));
  EXPECT_EQ(router->dropped(), 1u);

  auto worker1 = MessageDropper::Parse("router:send:forward:2,dealer:local-1:recv:forward:1", false, "local-1");
  ASSERT_NE(worker1, nullptr);
  EXPECT_TRUE(worker1->ShouldDrop(Dir::kReceive, "forward"));
  EXPECT_EQ(MessageDropper::Parse("router:send:forward:2,dealer:local-1:recv:forward:1", false, "local-2"), nullptr);
}

TEST(MessageDropper, PlusDropsEveryMatchFromTheNthOn) {
  auto d = MessageDropper::Parse("dealer:client:send:submit:2+", false, "client-7-1");
  ASSERT_NE(d, nullptr);
  EXPECT_FALSE(d->ShouldDrop(Dir::kSend, "submit"));
  EXPECT_TRUE(d->ShouldDrop(Dir::kSend, "submit"));
  EXPECT_TRUE(d->ShouldDrop(Dir::kSend, "submit"));
}

TEST(MessageDropper, MalformedRulesAreIgnoredNotFatal) {
  EXPECT_EQ(MessageDropper::Parse("router:sideways:forward:1,router:send:forward:0,nonsense,:::", true, ""), nullptr);
  auto d = MessageDropper::Parse("garbage,router:recv:hello:1", true, "");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->ShouldDrop(Dir::kReceive, "hello"));
}

TEST(MessageDropper, ASocketDropsTheNamedEnvelopeTypeOnTheWire) {
  ::setenv("XCPIPE_DROP_CONTROL", "dealer:dropper-test:send:heartbeat:1", 1);
  zmq::context_t context;
  auto router = ControlSocket::BindRouter(context, "tcp://127.0.0.1:*");
  ASSERT_TRUE(router.ok()) << router.status().ToString();
  auto dealer = ControlSocket::ConnectDealer(context, (*router)->last_endpoint(), "dropper-test-1");
  ::unsetenv("XCPIPE_DROP_CONTROL");
  ASSERT_TRUE(dealer.ok()) << dealer.status().ToString();
  for (uint64_t seq = 1; seq <= 2; ++seq) {
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initHeartbeat().setSequence(seq);
    ASSERT_TRUE((*dealer)->Send(m).ok());
  }
  // The first heartbeat was dropped: the second is the first to arrive.
  auto in = (*router)->Receive(std::chrono::milliseconds(3000));
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(in->has_value());
  EXPECT_EQ((*in)->message->envelope().getHeartbeat().getSequence(), 2u);
  auto none = (*router)->Receive(std::chrono::milliseconds(200));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

}  // namespace
}  // namespace xcpipe::control
