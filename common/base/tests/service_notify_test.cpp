// The sd_notify wrapper against a real AF_UNIX datagram socket standing in for systemd.
#include "xcpipe/base/service_notify.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace xcpipe::service {
namespace {

class NotifyListener {
 public:
  NotifyListener() {
    path_ = std::filesystem::temp_directory_path() / ("xcpipe-notify-" + std::to_string(getpid()) + ".sock");
    std::filesystem::remove(path_);
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    ok_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    timeval tv{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~NotifyListener() {
    if (fd_ >= 0) close(fd_);
    std::filesystem::remove(path_);
  }
  bool ok() const { return ok_; }
  const std::filesystem::path& path() const { return path_; }
  std::string Receive() {
    char buf[512];
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  bool ok_ = false;
};

TEST(ServiceNotifyTest, NoOpWithoutNotifySocket) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(NotifyEnabled());
  EXPECT_FALSE(NotifyReady());
  EXPECT_FALSE(NotifyWatchdog());
  unsetenv("WATCHDOG_USEC");
  EXPECT_EQ(WatchdogInterval().count(), 0);
  WatchdogPinger pinger;
  pinger.Tick();  // must not crash or send
}

TEST(ServiceNotifyTest, SendsEachStateAsOneDatagram) {
  NotifyListener listener;
  ASSERT_TRUE(listener.ok());
  setenv("NOTIFY_SOCKET", listener.path().c_str(), 1);
  EXPECT_TRUE(NotifyReady());
  EXPECT_EQ(listener.Receive(), "READY=1");
  EXPECT_TRUE(NotifyStatus("stage 0 ready\nblocks 0..3"));
  EXPECT_EQ(listener.Receive(), "STATUS=stage 0 ready blocks 0..3");
  EXPECT_TRUE(NotifyStopping());
  EXPECT_EQ(listener.Receive(), "STOPPING=1");

  setenv("WATCHDOG_USEC", "400000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  EXPECT_EQ(WatchdogInterval().count(), 400000);
  WatchdogPinger pinger;
  pinger.Tick();
  EXPECT_EQ(listener.Receive(), "WATCHDOG=1");
  pinger.Tick();  // within half the interval: nothing more
  // Another process's watchdog is not ours.
  setenv("WATCHDOG_PID", "1", 1);
  EXPECT_EQ(WatchdogInterval().count(), 0);
  unsetenv("WATCHDOG_PID");
  unsetenv("WATCHDOG_USEC");
  unsetenv("NOTIFY_SOCKET");
}

}  // namespace
}  // namespace xcpipe::service
