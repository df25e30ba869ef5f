#ifndef FARAMESH_INIT_SETUP_H
#define FARAMESH_INIT_SETUP_H

#include "plan.h"

int apply_mounts(const struct init_plan *plan, int *item);
int set_hostname(const struct init_plan *plan);
int bring_up_loopback(const struct init_plan *plan);
int build_ruleset(const struct init_plan *plan, int *ruleset);
char *find_program(const char *name, const char *search, const char *cwd);

#endif
