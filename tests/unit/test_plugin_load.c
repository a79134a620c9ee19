/* Transport plugins load only from the installed plugin directory (bare "NAME.so") or from an
 * absolute path the configuration names; relative paths and the current directory are refused. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "transport/registry.h"

#ifndef SPK_TEST_PLUGIN_DIR
#error "SPK_TEST_PLUGIN_DIR must name the build tree's test plugin directory"
#endif
#define PLUGIN SPK_TEST_PLUGIN_DIR "/spktest.so"

static int copy_file(const char *from, const char *to)
{
    size_t n = 0;
    char *data = spk_test_read_file(from, &n);
    if (!data)
        return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0)
        ok = 0;
    free(data);
    return ok ? 0 : -1;
}

START_TEST(bare_name_loads_from_plugin_dir)
{
    spk_transport_test_set_plugin_dir(SPK_TEST_PLUGIN_DIR);
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select("spktest.so", SPK_TRANSPORT_MEM_HOST, &h), SPK_OK);
    ck_assert_ptr_nonnull(h.dl);
    ck_assert_str_eq(h.vt->name, "spktest");
    spk_transport_release(&h);
    ck_assert_ptr_null(h.vt);
    /* Not there: NOT_FOUND naming the directory it looked in. */
    ck_assert_int_eq(spk_transport_select("nosuch.so", 0, &h), SPK_ERR_NOT_FOUND);
    ck_assert_msg(strstr(spk_last_error(), SPK_TEST_PLUGIN_DIR "/nosuch.so") != NULL, "%s",
                  spk_last_error());
    spk_transport_test_set_plugin_dir(NULL);
}
END_TEST

START_TEST(absolute_path_loads)
{
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select(PLUGIN, SPK_TRANSPORT_MEM_HOST, &h), SPK_OK);
    ck_assert_str_eq(h.vt->name, "spktest");
    spk_transport_release(&h);
}
END_TEST

START_TEST(relative_paths_are_refused)
{
    ck_assert_int_eq(chdir(SPK_TEST_PLUGIN_DIR), 0);
    const char *rel[] = {"./spktest.so", "../plugins/spktest.so", "plugins/spktest.so",
                         "./spktest"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        spk_transport_handle h;
        ck_assert_int_eq(spk_transport_select(rel[i], SPK_TRANSPORT_MEM_HOST, &h),
                         SPK_ERR_INVALID_ARG);
        ck_assert_ptr_null(h.vt);
        ck_assert_msg(strstr(spk_last_error(), "relative") && strstr(spk_last_error(), rel[i]),
                      "%s", spk_last_error());
    }
    ck_assert_ptr_null(dlopen(PLUGIN, RTLD_NOW | RTLD_NOLOAD));
}
END_TEST

/* A plugin sitting in the working directory is never picked up by its bare name: the lookup
 * goes to the plugin directory only, and the file in the cwd is not even mapped. */
START_TEST(current_directory_is_not_searched)
{
    char tmpl[] = "/tmp/spk_plugin_cwd_XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    char path[PATH_MAX], empty[PATH_MAX];
    snprintf(path, sizeof path, "%s/evil.so", dir);
    snprintf(empty, sizeof empty, "%s/plugins", dir);
    ck_assert_int_eq(copy_file(PLUGIN, path), 0);
    ck_assert_int_eq(mkdir(empty, 0700), 0);
    ck_assert_int_eq(chdir(dir), 0);
    spk_transport_test_set_plugin_dir(empty);
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select("evil.so", SPK_TRANSPORT_MEM_HOST, &h),
                     SPK_ERR_NOT_FOUND);
    ck_assert_ptr_null(h.vt);
    ck_assert_ptr_null(dlopen(path, RTLD_NOW | RTLD_NOLOAD));
    /* The same file by its absolute path is what a configuration must say to load it. */
    ck_assert_int_eq(spk_transport_select(path, SPK_TRANSPORT_MEM_HOST, &h), SPK_OK);
    spk_transport_release(&h);
    spk_transport_test_set_plugin_dir(NULL);
    unlink(path);
    rmdir(empty);
    ck_assert_int_eq(chdir("/"), 0);
    rmdir(dir);
}
END_TEST

/* One exported symbol per ABI version: a plugin that exports only a version newer than the
 * library's is refused by name, saying which version it speaks. */
START_TEST(plugin_of_a_newer_abi_only_is_refused)
{
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select(SPK_TEST_PLUGIN_DIR "/spkfuture.so", SPK_TRANSPORT_MEM_HOST, &h),
                     SPK_ERR_VERSION);
    ck_assert_ptr_null(h.vt);
    ck_assert_msg(strstr(spk_last_error(), "spk_transport_plugin_v2") != NULL, "%s", spk_last_error());
    ck_assert_ptr_null(dlopen(SPK_TEST_PLUGIN_DIR "/spkfuture.so", RTLD_NOW | RTLD_NOLOAD));
}
END_TEST

START_TEST(installed_plugin_dir_is_absolute)
{
    const char *d = spk_transport_plugin_dir();
    ck_assert_ptr_nonnull(d);
    ck_assert_msg(d[0] == '/', "plugin dir \"%s\" is not absolute", d);
    ck_assert_ptr_nonnull(strstr(d, "sparkinfer/plugins"));
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select("carrier-pigeon", 0, &h), SPK_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), d));
}
END_TEST

/* NCCL and verbs are modules in the plugin directory: without the module, a clear UNSUPPORTED
 * naming it; with the module built here (when its libraries were found), it loads through the
 * plugin ABI and the machine check decides (no GPU / RDMA device here: UNSUPPORTED, why given). */
START_TEST(gpu_and_rdma_transports_are_modules)
{
    static const char *names[] = {"nccl", "verbs"};
    spk_transport_handle h;
    spk_transport_test_set_plugin_dir(SPK_TEST_PLUGIN_DIR); /* the test plugin only */
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(spk_transport_select(names[i], SPK_TRANSPORT_MEM_HOST, &h), SPK_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(spk_last_error(), "is not installed here"));
        ck_assert_ptr_nonnull(strstr(spk_last_error(), names[i]));
    }
    spk_transport_test_set_plugin_dir(SPK_TEST_MODULE_DIR);
    for (int i = 0; i < 2; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/spk_transport_%s.so", SPK_TEST_MODULE_DIR, names[i]);
        if (access(path, R_OK) != 0) {
            printf("SKIP: %s not built here (its libraries were not found)\n", path);
            continue;
        }
        unsigned mem = i == 0 ? SPK_TRANSPORT_MEM_CUDA : SPK_TRANSPORT_MEM_HOST;
        spk_status st = spk_transport_select(names[i], mem, &h);
        printf("%s module: %s%s%s\n", names[i], spk_status_str(st), st == SPK_OK ? "" : ": ",
               st == SPK_OK ? "" : spk_last_error());
        if (st == SPK_OK) {
            ck_assert_str_eq(h.vt->name, names[i]);
            ck_assert_ptr_nonnull(h.dl);
            spk_transport_release(&h);
        } else {
            ck_assert_int_eq(st, SPK_ERR_UNSUPPORTED);
            ck_assert_ptr_nonnull(strstr(spk_last_error(), "cannot run here"));
        }
    }
    spk_transport_test_set_plugin_dir(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plugin_load");
    TCase *tc = tcase_create("plugin_load");
    tcase_add_test(tc, bare_name_loads_from_plugin_dir);
    tcase_add_test(tc, absolute_path_loads);
    tcase_add_test(tc, relative_paths_are_refused);
    tcase_add_test(tc, current_directory_is_not_searched);
    tcase_add_test(tc, plugin_of_a_newer_abi_only_is_refused);
    tcase_add_test(tc, installed_plugin_dir_is_absolute);
    tcase_add_test(tc, gpu_and_rdma_transports_are_modules);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
