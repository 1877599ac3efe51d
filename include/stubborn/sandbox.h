/*
 * Giving up what the running resolver does not need, in the order
 * acquire, then drop, then restrict: sockets are bound and files read as
 * root, a launcher process is split off for the programs the daemon runs
 * (the on-incident hook, the CT log list refresh), then the daemon enters
 * its chroot, switches user, drops every capability and closes itself in
 * a seccomp filter.
 */
#ifndef STUBBORN_SANDBOX_H
#define STUBBORN_SANDBOX_H

#include <stdbool.h>
#include <stdio.h>

#include <event2/event.h>

/*
 * Enter dir as the root directory (NULL: stay), then switch to user's
 * uid, gid and only its primary group (NULL: stay) and check the switch
 * cannot be undone.  Returns 0, or -1 (logged).
 */
int	sandbox_drop_privileges(const char *user, const char *dir);

/*
 * Whether getpwnam's errno (after a NULL) says the lookup failed, rather
 * than that the name does not exist (0, or what NSS modules set for it).
 */
bool	sandbox_lookup_failed(int e);

/*
 * Start the launcher: a child that stays outside the chroot and the
 * seccomp filter and runs as user (NULL: the current one).  From now on
 * incident hooks go through it: it runs the on-incident command of the
 * conf file at conf (read again for each incident; hook, then the last
 * one that loaded, when it does not load), never one the daemon names.
 * It exits when the daemon does.  Returns 0, or -1 (logged).
 */
int	sandbox_launcher_start(struct event_base *base, const char *user,
	    const char *conf, const char *hook);

/*
 * Ask the launcher to run this binary's update-log-list -c conf;
 * done(status, arg) runs in the event loop with its wait status, or -1
 * when it could not start.  One at a time: -1 while one is running or
 * without a launcher.
 */
int	sandbox_launch_refresh(void (*done)(int, void *), void *arg);

/* Stop the launcher (it is told by end of file) and reap it. */
void	sandbox_launcher_stop(void);

/* Enter dir as the root directory.  Returns 0, or -1 (logged). */
int	sandbox_chroot(const char *dir);

/*
 * path as the process sees it after sandbox_chroot: with the chroot's
 * prefix taken off when path lies under it, else unchanged.
 */
const char *sandbox_path(const char *path);

/*
 * A file the operator named, opened for reading only if it is a regular
 * file: a FIFO would block the open and /dev/zero a read for ever, and a
 * directory would read as empty.  NULL with *why (errno kept: ENOENT
 * when there is no such file) when it is not.
 */
FILE	*sandbox_fopen_regular(const char *path, const char **why);

/* True when path (absolute) lies under dir. */
bool	sandbox_path_under(const char *path, const char *dir);

/*
 * Drop every capability (effective, permitted, inheritable, ambient) and
 * forbid regaining any through exec.  Returns 0, or -1 (logged).
 */
int	sandbox_drop_capabilities(void);

/*
 * Allow only the system calls the running resolver makes; any other kills
 * the process.  Returns 0, -1 (logged) on failure, or 1 when this build
 * has no seccomp support.
 */
int	sandbox_seccomp(void);

#endif
