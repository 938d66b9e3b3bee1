// Minimal assertion harness for the C++ unit tests (no third-party framework needed on a board).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace orbitfl_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all() {
  int failed_cases = 0;
  for (auto& c : registry()) {
    int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::printf("  exception: %s\n", e.what());
      ++failures();
    }
    bool ok = failures() == before;
    std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", c.name);
    if (!ok) ++failed_cases;
  }
  std::printf("%zu cases, %d failed\n", registry().size(), failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace orbitfl_test

#define OFL_CONCAT2(a, b) a##b
#define OFL_CONCAT(a, b) OFL_CONCAT2(a, b)
#define TEST_CASE(name)                                                              \
  static void OFL_CONCAT(test_fn_, __LINE__)();                                      \
  static orbitfl_test::Register OFL_CONCAT(test_reg_, __LINE__)(name, OFL_CONCAT(test_fn_, __LINE__)); \
  static void OFL_CONCAT(test_fn_, __LINE__)()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
      ++orbitfl_test::failures();                                                    \
    }                                                                                \
  } while (0)

#define CHECK_THROWS(expr, Type)                                                     \
  do {                                                                               \
    bool thrown_ = false;                                                            \
    try {                                                                            \
      expr;                                                                          \
    } catch (const Type&) {                                                          \
      thrown_ = true;                                                                \
    }                                                                                \
    if (!thrown_) {                                                                  \
      std::printf("  %s:%d: %s did not throw %s\n", __FILE__, __LINE__, #expr, #Type); \
      ++orbitfl_test::failures();                                                    \
    }                                                                                \
  } while (0)

#define TEST_MAIN() \
  int main() { return orbitfl_test::run_all(); }
