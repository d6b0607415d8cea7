// Gate: at most `limit` taken at once, each slot given back exactly once
// (destroyed, released, moved from or assigned over), also from many
// threads at once and after the gate itself is gone; slots of several
// units (bytes) grow.
#include "gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace airlock::daemon {
namespace {

TEST(GateTest, AtMostLimitSlotsAndEachGivenBackOnce) {
  Gate gate(2);
  EXPECT_EQ(gate.limit(), 2);
  Gate::Slot a = gate.try_enter(), b = gate.try_enter();
  EXPECT_TRUE(a);
  EXPECT_TRUE(b);
  EXPECT_EQ(gate.used(), 2);
  Gate::Slot c = gate.try_enter();
  EXPECT_FALSE(c);  // the third waits for nobody: refused
  EXPECT_EQ(gate.used(), 2);
  a.release();
  a.release();  // idempotent
  EXPECT_FALSE(a);
  EXPECT_EQ(gate.used(), 1);
  {
    Gate::Slot moved = std::move(b);  // moved from: b gives nothing back
    EXPECT_FALSE(b);
    EXPECT_EQ(gate.used(), 1);
  }
  EXPECT_EQ(gate.used(), 0);
  c = gate.try_enter();
  Gate::Slot d = gate.try_enter();
  EXPECT_EQ(gate.used(), 2);
  c = std::move(d);  // assigned over: c's own slot goes back
  EXPECT_EQ(gate.used(), 1);
  c = Gate::Slot();
  EXPECT_EQ(gate.used(), 0);
  EXPECT_EQ(Gate(0).limit(), 1);  // never unbounded, never closed
}

TEST(GateTest, ASlotMayOutliveItsGate) {
  Gate::Slot kept;
  {
    Gate gate(1);
    kept = gate.try_enter();
    EXPECT_TRUE(kept);
  }
  kept.release();  // the count it points at is still alive
  EXPECT_FALSE(kept);
}

TEST(GateTest, ConcurrentEntrantsNeverExceedTheLimit) {
  Gate gate(3);
  std::atomic<int> inside{0}, most{0}, admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        Gate::Slot s = gate.try_enter();
        if (!s) continue;
        ++admitted;
        const int now = ++inside;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        --inside;
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_LE(most.load(), 3);
  EXPECT_GT(admitted.load(), 0);
  EXPECT_EQ(gate.used(), 0);
}

TEST(GateTest, AmountsAddUpAndGrow) {
  Gate gate(100);
  Gate::Slot a = gate.try_enter(60);
  ASSERT_TRUE(a);
  EXPECT_EQ(a.amount(), 60);
  EXPECT_FALSE(gate.try_enter(41));  // 60 + 41 > 100: refused, nothing taken
  EXPECT_EQ(gate.used(), 60);
  Gate::Slot b = gate.try_enter(10);
  ASSERT_TRUE(b);
  EXPECT_TRUE(gate.try_enter(0));  // nothing is always free
  EXPECT_TRUE(b.try_grow_to(40));  // 30 more
  EXPECT_EQ(b.amount(), 40);
  EXPECT_EQ(gate.used(), 100);
  EXPECT_FALSE(b.try_grow_to(41));  // refused, nothing changed
  EXPECT_EQ(b.amount(), 40);
  EXPECT_EQ(gate.used(), 100);
  EXPECT_TRUE(b.try_grow_to(5));  // never gives back
  EXPECT_EQ(b.amount(), 40);
  Gate::Slot moved = std::move(a);
  EXPECT_EQ(moved.amount(), 60);
  EXPECT_EQ(a.amount(), 0);
  EXPECT_FALSE(a.try_grow_to(1));  // moved from: empty
  a.release();                     // gives nothing back
  EXPECT_EQ(gate.used(), 100);
  moved.release();
  b.release();
  EXPECT_EQ(gate.used(), 0);
  EXPECT_FALSE(gate.try_enter(101));  // more than the limit is never free
  EXPECT_EQ(gate.used(), 0);
}

}  // namespace
}  // namespace airlock::daemon
