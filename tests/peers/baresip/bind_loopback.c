/*
 * LD_PRELOAD shim for baresip in the voice tests: a bind() to the wildcard
 * address (0.0.0.0 or ::) becomes a bind to loopback (127.0.0.1 or ::1).
 *
 * Why: baresip 1.0.0's DNS client (libre's dnsc) opens its UDP sockets on
 * the wildcard address at start-up, whatever sip_listen and net_interface
 * say, and the tests must listen on loopback only. Every other socket
 * baresip opens is already bound to 127.0.0.1 by its config.
 *
 * Built by tests/voice_peers.py with: cc -shared -fPIC -o X.so bind_loopback.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static bind_function real_bind;

	if (!real_bind)
		real_bind = (bind_function)dlsym(RTLD_NEXT, "bind");

	if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		struct sockaddr_in v4;

		memcpy(&v4, addr, sizeof(v4));
		if (v4.sin_addr.s_addr == htonl(INADDR_ANY)) {
			v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			return real_bind(fd, (const struct sockaddr *)&v4, sizeof(v4));
		}
	}
	else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 v6;

		memcpy(&v6, addr, sizeof(v6));
		if (IN6_IS_ADDR_UNSPECIFIED(&v6.sin6_addr)) {
			v6.sin6_addr = in6addr_loopback;
			return real_bind(fd, (const struct sockaddr *)&v6, sizeof(v6));
		}
	}
	return real_bind(fd, addr, len);
}
