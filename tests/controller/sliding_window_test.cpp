#include <gtest/gtest.h>

#include "helios/controller/breach_counter.h"
#include "helios/controller/sliding_window.h"

namespace helios::controller {
namespace {

TEST(BreachCounter, CountsBreachesAmongTheLastWindowTokens) {
  BreachCounter counter(4);
  for (const bool b : {true, true, false, true}) counter.record(b);
  EXPECT_EQ(counter.count(), 3);
  EXPECT_EQ(counter.size(), 4);
  counter.record(false);  // the first breach falls out
  EXPECT_EQ(counter.count(), 2);
  counter.record(false);  // the second too
  counter.record(false);  // a non-breach
  EXPECT_EQ(counter.count(), 1);
  counter.record(false);
  EXPECT_EQ(counter.count(), 0);
  EXPECT_EQ(counter.size(), 4);
  counter.record(true);
  counter.reset();
  EXPECT_EQ(counter.count(), 0);
  EXPECT_EQ(counter.size(), 0);
}

TEST(BreachCounter, ResizingKeepsTheNewestTokens) {
  BreachCounter counter(6);
  for (const bool b : {true, true, true, false, false, true}) counter.record(b);
  counter.set_window(3);  // keeps false, false, true
  EXPECT_EQ(counter.size(), 3);
  EXPECT_EQ(counter.count(), 1);
  counter.set_window(10);
  EXPECT_EQ(counter.size(), 3);
  EXPECT_EQ(counter.count(), 1);
  for (int i = 0; i < 7; ++i) counter.record(true);
  EXPECT_EQ(counter.count(), 8);
  counter.record(true);  // the window is full: the oldest (false) leaves
  EXPECT_EQ(counter.count(), 9);
  EXPECT_THROW(counter.set_window(0), Error);
}

TEST(PercentileWindow, NearestRankOverTheLastSamples) {
  PercentileWindow window(100);
  EXPECT_EQ(window.percentile(0.95), 0.0);
  EXPECT_EQ(window.mean(), 0.0);
  for (int i = 100; i >= 1; --i) window.add(i);
  EXPECT_EQ(window.percentile(0.95), 95.0);
  EXPECT_EQ(window.percentile(0.5), 50.0);
  EXPECT_EQ(window.percentile(1.0), 100.0);
  EXPECT_EQ(window.percentile(0.0), 1.0);
  EXPECT_DOUBLE_EQ(window.mean(), 50.5);
  // 100 more samples of 1000 replace every earlier one.
  for (int i = 0; i < 100; ++i) window.add(1000);
  EXPECT_EQ(window.size(), 100u);
  EXPECT_EQ(window.percentile(0.5), 1000.0);
  window.clear();
  EXPECT_EQ(window.size(), 0u);
}

TEST(PercentileWindow, EvictsOldestFirst) {
  PercentileWindow window(3);
  for (const double v : {10.0, 1.0, 2.0, 3.0}) window.add(v);  // 10 is evicted
  EXPECT_EQ(window.percentile(1.0), 3.0);
  EXPECT_DOUBLE_EQ(window.mean(), 2.0);
}

TEST(UrgentClass, TheMostUrgentRecentClassHandsOverWhenItStopsArriving) {
  UrgentClass classes(4);
  EXPECT_EQ(classes.most_urgent(), -1);
  EXPECT_TRUE(classes.observe(2));
  EXPECT_FALSE(classes.observe(2));
  EXPECT_TRUE(classes.observe(0)) << "a more urgent class takes over at once";
  EXPECT_EQ(classes.most_urgent(), 0);
  // Three more of class 1: class 0 is still among the last 4.
  EXPECT_TRUE(classes.observe(1) == false && classes.observe(1) == false);
  EXPECT_FALSE(classes.observe(1));
  EXPECT_EQ(classes.most_urgent(), 0);
  // A fourth: class 0 left the span, class 1 is the most urgent now.
  EXPECT_TRUE(classes.observe(1));
  EXPECT_EQ(classes.most_urgent(), 1);
}

}  // namespace
}  // namespace helios::controller
