#include <gtest/gtest.h>
TEST(Placeholder, NotYetWritten) { GTEST_SKIP() << "being written"; }
