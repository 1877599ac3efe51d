/*
 * Leveled logging to stderr (foreground) or syslog (daemon), in the
 * OpenBSD log.c manner.  Levels are syslog's (LOG_ERR .. LOG_DEBUG).
 */
#ifndef STUBBORN_LOG_H
#define STUBBORN_LOG_H

#include <stdarg.h>

/* Start logging to where: stderr (1, the foreground), syslog (0) or both. */
#define LOG_TO_SYSLOG	0
#define LOG_TO_STDERR	1
#define LOG_TO_BOTH	2
void	log_init(int where, int level);
/* Change the most verbose level that is still written. */
void	log_setlevel(int level);
int	log_getlevel(void);

/*
 * log_err and log_warn append ": strerror(errno)"; the x variants do not.
 * log_err: why stubborn will not start, said whatever log-level is set.
 */
void	log_err(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_errx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));

/* Start-up and broken internal invariants only: log, then exit(1). */
void	fatal(const char *, ...)
	    __attribute__((format(printf, 1, 2), noreturn));
void	fatalx(const char *, ...)
	    __attribute__((format(printf, 1, 2), noreturn));

/*
 * Drain the OpenSSL error queue into one warning that starts with what;
 * the queue is empty afterwards, so a later SSL_get_error() is not misled.
 * log_crypto_err: the same, as the error that ends a command.
 */
void	log_crypto(const char *what);
void	log_crypto_err(const char *what);

/*
 * Write one trust-incident record: json is a complete JSON object on one
 * line (borrowed).  Written whatever the level, so evidence is never lost.
 */
void	log_incident(const char *json);

/*
 * Also run cmd (a shell command; NULL: none) for every incident, with the
 * JSON line on its standard input.  It runs detached and is killed after
 * LOG_HOOK_TIMEOUT_SEC; the event loop never waits for it.  cmd is
 * borrowed until replaced.
 */
#define LOG_HOOK_TIMEOUT_SEC	10
void	log_set_incident_hook(const char *cmd);

/* Run cmd with json on its standard input, detached, as described above. */
void	log_run_hook(const char *cmd, const char *json);

/*
 * Hand incident hooks to fn (NULL: log_run_hook in this process), e.g.
 * to a process outside the sandbox.
 */
void	log_set_hook_runner(void (*fn)(const char *cmd, const char *json));

#endif
