#pragma once

// Who may call the Admin service (helios.v1.Admin): pure functions over what a call carries.

#include <grpcpp/support/status.h>
#include <grpcpp/support/string_ref.h>

#include <string_view>

#include "helios/serve/server_config.h"

namespace helios::serve {

// With admin.token set, a call needs "authorization: Bearer <admin.token>" (the scheme in any
// case, any spaces or tabs around it and the token): missing or wrong -> UNAUTHENTICATED.
// Without a token, only local peers may call (local_peer), others get PERMISSION_DENIED.
grpc::Status check_admin_access(std::string_view peer, const grpc::string_ref* authorization,
                                const ServerConfig& config);

// Whether a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/path") is
// 127.0.0.1, ::1, ::ffff:127.0.0.1 or a Unix socket. No other 127.0.0.0/8 address counts: a
// service-mesh sidecar relays remote callers from one (Istio's 127.0.0.6).
bool local_peer(std::string_view peer);

// The token of an authorization value with the Bearer scheme (RFC 7235: the scheme is
// case-insensitive; RFC 9110: whitespace around the value is optional); empty for another
// scheme or none.
std::string_view bearer_token(std::string_view authorization);

}  // namespace helios::serve
