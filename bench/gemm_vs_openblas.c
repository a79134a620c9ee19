/* Prefill matmul: our int8 (VNNI) kernel against OpenBLAS sgemm on dequantized weights, one
 * thread, 512 tokens through one Q4_1 matrix of the model. Build and run: bench/gemm-vs-openblas.sh */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <cblas.h>
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "model/gguf.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc, char **argv){
  if (argc < 2) { fprintf(stderr, "usage: gemm_vs_openblas MODEL.gguf\n"); return 2; }
  spk_gguf_file *f; spk_gguf_open(argv[1],&f);
  const spk_gguf_tensor *t=spk_gguf_find_tensor(f,"blk.0.ffn_up.weight"); int n_in=576,n_out=1536,T=512;
  float *x=malloc(4*T*n_in),*y=malloc(4*T*n_out),*wf=malloc(4*n_in*n_out); for(int i=0;i<T*n_in;i++)x[i]=(i%97)*0.01f-0.4f;
  void *act=malloc(spk_act_size(t->type,n_in,T));
  double best1=1e9,best2=1e9,best3=1e9;
  for(int r=0;r<5;r++){
    double a=now(); spk_act_quantize(act,t->type,x,n_in,0,T); spk_matmul(y,n_out,t->data,t->type,act,n_in,T,0,n_out); double b=now()-a; if(b<best1)best1=b;
    a=now(); for(int o=0;o<n_out;o++) spk_dequantize_row(wf+(size_t)o*n_in,(const char*)t->data+(size_t)o*spk_dtype_row_size(t->type,n_in),t->type,n_in); double c=now()-a; if(c<best3)best3=c;
    a=now(); cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,T,n_out,n_in,1.0f,x,n_in,wf,n_in,0.0f,y,n_out); b=now()-a; if(b<best2)best2=b;
  }
  double fl=2.0*T*n_in*n_out;
  printf("one thread, %d tokens x (%d->%d) Q4_1: int8 kernel %.2f ms (%.0f GFLOP/s); OpenBLAS sgemm %.2f ms (%.0f GFLOP/s) + dequantize %.2f ms\n",T,n_in,n_out,best1*1e3,fl/best1/1e9,best2*1e3,fl/best2/1e9,best3*1e3);
}
