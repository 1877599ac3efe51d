/*
 * Giving up what the running resolver does not need, in the order
 * acquire, then drop, then restrict.
 */
#ifndef STUBBORN_SANDBOX_H
#define STUBBORN_SANDBOX_H

/*
 * Switch to user's uid, gid and only its primary group, then check the
 * switch cannot be undone.  Returns 0, or -1 (logged).
 */
int	sandbox_drop_privileges(const char *user);

#endif
