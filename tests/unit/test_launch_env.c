/* Launch under mpirun / srun / a PMI launcher: rank, world size and coordinator come from the
 * launcher's environment when the SPK_* variables (and the config struct) leave them unset. */
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_internal.h"
#include "testutil.h"

static const char *const k_vars[] = {
    "SPK_RANK", "SPK_WORLD_SIZE", "SPK_COORDINATOR", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS", "MASTER_ADDR", "MASTER_PORT",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof k_vars / sizeof k_vars[0]; i++)
        unsetenv(k_vars[i]);
}

/* Resolve with nothing set in the config. */
static spk_status resolve(spk_launch_env *e)
{
    memset(e, 0, sizeof *e);
    e->rank = -1;
    e->world_size = 0;
    e->rank_from = e->world_from = e->coord_from = "config";
    return spk_cluster_launch_env(e);
}

START_TEST(defaults_without_any_launcher)
{
    clear_env();
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_int_eq(e.rank, 0);
    ck_assert_int_eq(e.world_size, 1);
    ck_assert_str_eq(e.coordinator, "127.0.0.1:29500");
    ck_assert_str_eq(e.rank_from, "default");
}
END_TEST

START_TEST(each_launcher_maps_rank_and_size)
{
    static const struct {
        const char *rank_var, *rank, *size_var, *size;
    } cases[] = {
        {"OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4"},
        {"PMI_RANK", "2", "PMI_SIZE", "3"},
        {"SLURM_PROCID", "1", "SLURM_NTASKS", "2"},
        {"SLURM_PROCID", "5", "SLURM_STEP_NUM_TASKS", "8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clear_env();
        setenv(cases[i].rank_var, cases[i].rank, 1);
        setenv(cases[i].size_var, cases[i].size, 1);
        spk_launch_env e;
        ck_assert_msg(resolve(&e) == SPK_OK, "%s", spk_last_error());
        ck_assert_int_eq(e.rank, atoi(cases[i].rank));
        ck_assert_int_eq(e.world_size, atoi(cases[i].size));
        ck_assert_str_eq(e.rank_from, cases[i].rank_var);
        ck_assert_str_eq(e.world_from, cases[i].size_var);
    }
    /* srun: the step's task count wins over the allocation's. */
    clear_env();
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_NTASKS", "16", 1);
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_int_eq(e.world_size, 2);
}
END_TEST

START_TEST(spk_variables_and_config_win)
{
    clear_env();
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("SPK_RANK", "3", 1);
    setenv("SPK_WORLD_SIZE", "4", 1);
    setenv("MASTER_ADDR", "10.0.0.9", 1);
    setenv("SPK_COORDINATOR", "10.0.0.1:4000", 1);
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_int_eq(e.rank, 3);
    ck_assert_int_eq(e.world_size, 4);
    ck_assert_str_eq(e.coordinator, "10.0.0.1:4000");
    /* Per variable: SPK_RANK alone wins for the rank, the launcher still gives the size. */
    unsetenv("SPK_WORLD_SIZE");
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_int_eq(e.rank, 3);
    ck_assert_int_eq(e.world_size, 2);
    /* What the config sets is kept. */
    memset(&e, 0, sizeof e);
    e.rank = 0;
    e.world_size = 1;
    strcpy(e.coordinator, "127.0.0.1:1234");
    e.rank_from = e.world_from = e.coord_from = "config";
    ck_assert_int_eq(spk_cluster_launch_env(&e), SPK_OK);
    ck_assert_int_eq(e.rank, 0);
    ck_assert_int_eq(e.world_size, 1);
    ck_assert_str_eq(e.coordinator, "127.0.0.1:1234");
    ck_assert_str_eq(e.rank_from, "config");
}
END_TEST

/* mpirun inside a Slurm allocation: OMPI_* are the truth, the inherited SLURM_* are not. */
START_TEST(open_mpi_beats_inherited_slurm)
{
    clear_env();
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "1", 1);
    setenv("OMPI_COMM_WORLD_RANK", "2", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    setenv("PMI_RANK", "7", 1);
    setenv("PMI_SIZE", "8", 1);
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_int_eq(e.rank, 2);
    ck_assert_int_eq(e.world_size, 4);
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("OMPI_COMM_WORLD_SIZE");
    ck_assert_int_eq(resolve(&e), SPK_OK); /* srun --mpi=pmi2: PMI before SLURM */
    ck_assert_int_eq(e.rank, 7);
    ck_assert_int_eq(e.world_size, 8);
}
END_TEST

START_TEST(master_addr_and_port)
{
    clear_env();
    setenv("MASTER_ADDR", "node01", 1);
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_str_eq(e.coordinator, "node01:29500");
    setenv("MASTER_PORT", "6000", 1);
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_str_eq(e.coordinator, "node01:6000");
    setenv("MASTER_ADDR", "fd00::7", 1);
    ck_assert_int_eq(resolve(&e), SPK_OK);
    ck_assert_str_eq(e.coordinator, "[fd00::7]:6000");
    char host[64], port[16];
    ck_assert_int_eq(spk_net_split_hostport(e.coordinator, host, sizeof host, port, sizeof port),
                     SPK_OK);
    ck_assert_str_eq(host, "fd00::7");
    char longaddr[400];
    memset(longaddr, 'a', sizeof longaddr - 1);
    longaddr[sizeof longaddr - 1] = '\0';
    setenv("MASTER_ADDR", longaddr, 1);
    ck_assert_int_eq(resolve(&e), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "MASTER_ADDR"));
}
END_TEST

START_TEST(bad_values_name_the_variable)
{
    clear_env();
    setenv("OMPI_COMM_WORLD_RANK", "x1", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    spk_launch_env e;
    ck_assert_int_eq(resolve(&e), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "OMPI_COMM_WORLD_RANK=\"x1\""));
    clear_env();
    setenv("PMI_RANK", "1", 1); /* a rank without a size */
    ck_assert_int_eq(resolve(&e), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "PMI_SIZE"));
    /* Through spk_cluster_open: the range error names where the rank came from. */
    clear_env();
    setenv("SLURM_PROCID", "3", 1);
    setenv("SLURM_NTASKS", "2", 1);
    spk_cluster_config cfg;
    spk_cluster_config_init(&cfg);
    spk_cluster *c = NULL;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(spk_last_error(), "rank 3 (SLURM_PROCID) out of range 0..1"), "%s",
                  spk_last_error());
    /* A one-task srun step opens a one-rank cluster. */
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "1", 1);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_OK);
    ck_assert_int_eq(spk_cluster_rank(c), 0);
    ck_assert_int_eq(spk_cluster_world_size(c), 1);
    spk_cluster_close(c);
    clear_env();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("launch_env");
    TCase *tc = tcase_create("launch_env");
    tcase_add_test(tc, defaults_without_any_launcher);
    tcase_add_test(tc, each_launcher_maps_rank_and_size);
    tcase_add_test(tc, spk_variables_and_config_win);
    tcase_add_test(tc, open_mpi_beats_inherited_slurm);
    tcase_add_test(tc, master_addr_and_port);
    tcase_add_test(tc, bad_values_name_the_variable);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
