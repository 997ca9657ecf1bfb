// Who may call the Admin service: local peers only without admin.token, the Bearer scheme as
// RFC 7235 spells it with one, and no start-up at all when the service would be reachable from
// other hosts without a token.
#include "helios/serve/admin_access.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "helios/serve/daemon.h"
#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using serve::bearer_token;
using serve::local_peer;

TEST(AdminAccess, OnlyTheLoopbackAddressesThemselvesAreLocal) {
  EXPECT_TRUE(local_peer("ipv4:127.0.0.1:5000"));
  EXPECT_TRUE(local_peer("ipv6:[::1]:5000"));
  EXPECT_TRUE(local_peer("ipv6:%5B::1%5D:5000"));
  EXPECT_TRUE(local_peer("ipv6:[::ffff:127.0.0.1]:5000"));
  EXPECT_TRUE(local_peer("ipv6:[::FFFF:127.0.0.1]:5000"));
  EXPECT_TRUE(local_peer("unix:/run/helios.sock"));
  // A service-mesh sidecar relays remote callers from 127.0.0.6.
  EXPECT_FALSE(local_peer("ipv4:127.0.0.6:41000"));
  EXPECT_FALSE(local_peer("ipv4:127.1.2.3:41000"));
  EXPECT_FALSE(local_peer("ipv6:[::ffff:127.0.0.6]:41000"));
  EXPECT_FALSE(local_peer("ipv4:127.0.0.10:41000"));
  EXPECT_FALSE(local_peer("ipv4:10.0.0.7:41000"));
  EXPECT_FALSE(local_peer("ipv6:[::1234]:5000"));
  EXPECT_FALSE(local_peer("ipv6:[2001:db8::1]:5000"));
  EXPECT_FALSE(local_peer(""));
  EXPECT_FALSE(local_peer("ipv4:"));

  serve::ServerConfig config;  // no admin.token
  EXPECT_TRUE(serve::check_admin_access("ipv4:127.0.0.1:5000", nullptr, config).ok());
  const grpc::Status mesh = serve::check_admin_access("ipv4:127.0.0.6:41000", nullptr, config);
  EXPECT_EQ(mesh.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(mesh.error_message().find("admin.token"), std::string::npos) << mesh.error_message();
}

TEST(AdminAccess, BearerSchemeIsCaseInsensitiveWithAnyWhitespace) {
  EXPECT_EQ(bearer_token("Bearer s3cret"), "s3cret");
  EXPECT_EQ(bearer_token("bearer s3cret"), "s3cret");
  EXPECT_EQ(bearer_token("BEARER s3cret"), "s3cret");
  EXPECT_EQ(bearer_token("  Bearer \t  s3cret \t"), "s3cret");
  EXPECT_EQ(bearer_token("Bearer\ts3cret"), "s3cret");
  EXPECT_EQ(bearer_token("Bearers3cret"), "");
  EXPECT_EQ(bearer_token("Basic s3cret"), "");
  EXPECT_EQ(bearer_token("Bearer"), "");
  EXPECT_EQ(bearer_token("Bearer   "), "");
  EXPECT_EQ(bearer_token(""), "");

  serve::ServerConfig config;
  config.admin_token = "s3cret";
  const auto access = [&](const std::string& value) {
    const grpc::string_ref ref(value);
    return serve::check_admin_access("ipv4:127.0.0.1:5000", &ref, config).error_code();
  };
  EXPECT_EQ(access("bearer  s3cret"), grpc::StatusCode::OK);
  EXPECT_EQ(access("Bearer s3cret "), grpc::StatusCode::OK);
  EXPECT_EQ(access("Bearer s3cre"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(access("Bearer s3cret2"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(access("Basic s3cret"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(access("Bearer "), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(serve::check_admin_access("ipv4:127.0.0.1:5000", nullptr, config).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(AdminAccess, AdminReachableFromOtherHostsNeedsAToken) {
  serve::ServerConfig config;
  for (const std::string address : {"127.0.0.1:50051", "localhost:50051", "[::1]:50051",
                                    "127.0.0.6:50051", "unix:/run/helios.sock"}) {
    config.grpc_address = address;
    EXPECT_NO_THROW(serve::check_admin_exposure(config)) << address;
  }
  for (const std::string address :
       {"0.0.0.0:50051", "[::]:50051", "10.0.0.7:50051", "helios.example:50051", ":50051"}) {
    config.grpc_address = address;
    expect_error([&] { serve::check_admin_exposure(config); }, ErrorCode::kInvalidArgument,
                 {"admin.token", "grpc.address", address});
  }
  config.grpc_address = "0.0.0.0:50051";
  config.admin_token = "s3cret";
  EXPECT_NO_THROW(serve::check_admin_exposure(config));
}

// The daemon itself refuses to start, naming the keys, and starts once a token is set; the
// token then works with the scheme in any case.
TEST(AdminAccess, DaemonOnAllInterfacesStartsOnlyWithAToken) {
  {
    DaemonProcess daemon(daemon_config("prose-micro", {{"grpc", {{"address", "0.0.0.0:0"}}}}));
    EXPECT_NE(daemon.wait_exit(), 0);
    EXPECT_NE(daemon.log().find("admin.token"), std::string::npos) << daemon.log();
    EXPECT_NE(daemon.log().find("grpc.address"), std::string::npos) << daemon.log();
  }
  DaemonProcess daemon(daemon_config(
      "prose-micro", {{"grpc", {{"address", "0.0.0.0:0"}}}, {"admin", {{"token", "s3cret"}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto admin = daemon.admin();
  for (const std::string value : {"bearer s3cret", "BEARER   s3cret", "Bearer s3cret"}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", value);
    v1::GetStatusResponse response;
    EXPECT_TRUE(admin->GetStatus(&context, v1::GetStatusRequest(), &response).ok()) << value;
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Basic s3cret");
  v1::GetStatusResponse response;
  EXPECT_EQ(admin->GetStatus(&context, v1::GetStatusRequest(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}


// admin.token_file (a mounted secret) counts as a token for the exposure check, is read when
// the daemon starts (one line, trailing newline dropped), and is exclusive with admin.token.
TEST(AdminAccess, TokenFileIsReadAtStartAndExclusiveWithTheToken) {
  ScratchDir dir("admin_token_file");
  const std::filesystem::path token = dir.path() / "token";
  std::ofstream(token) << "s3cret-from-a-file\n";
  const serve::ServerConfig config = serve::ServerConfig::parse(
      R"({"grpc": {"address": "0.0.0.0:50051"}, "model": {"path": "m"},
          "admin": {"token_file": "token"}})", dir.path(),
      "server.json");
  EXPECT_EQ(config.admin_token_file, token);
  EXPECT_NO_THROW(serve::check_admin_exposure(config));
  serve::ServerConfig started = config;
  serve::read_admin_token(started);
  EXPECT_EQ(started.admin_token, "s3cret-from-a-file");

  std::ofstream(token, std::ios::trunc) << "\n";
  expect_error([&] { serve::ServerConfig c = config; serve::read_admin_token(c); },
               ErrorCode::kInvalidArgument, {"admin.token_file", token.string()});
  serve::ServerConfig missing = config;
  missing.admin_token_file = dir.path() / "absent";
  expect_error([&] { serve::read_admin_token(missing); }, ErrorCode::kInvalidArgument,
               {"admin.token_file", "absent"});
  expect_error(
      [&] {
        serve::ServerConfig::parse(R"({"model": {"path": "m"}, "admin": {"token": "a", "token_file": "token"}})",
                                   dir.path(), "server.json");
      },
      ErrorCode::kInvalidArgument, {"admin.token_file", "not both"});
}

}  // namespace
}  // namespace helios::testing
