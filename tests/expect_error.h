// A check the tests of bad input share: the call must throw, and the message must say what was wrong.
#pragma once
#include <gtest/gtest.h>

#include <exception>
#include <string>

namespace longctx {

// f() throws an exception whose message contains `what`; label names the input in a failure.
template <class F>
void expect_error_containing(const F& f, const std::string& what, const std::string& label) {
  try {
    f();
    ADD_FAILURE() << label << " was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << label << ": " << e.what();
  }
}

}  // namespace longctx
