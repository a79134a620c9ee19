# np-forward.py: an exact float64 forward pass of SmolLM2 (numpy, weights dequantized with the
# gguf package) for one reference sequence; prints how far llama.cpp's log-probs are from it.
# Usage: python3 tests/ref/np-forward.py [SEQ_INDEX]   (needs: pip install gguf numpy; model path in MODEL)
import json, os, numpy as np, sys
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(os.environ.get('MODEL', os.path.expanduser('~/.cache/sparkinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf')))
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape([int(x) for x in reversed(t.shape.tolist())]) if a.ndim==1 and len(t.shape)>1 else a
E,H,KV,HD,L=576,9,3,64,30
emb = W('token_embd.weight').reshape(49152,E)
ref = json.load(open(os.path.join(os.path.dirname(__file__), '..', 'data', 'ref_logprobs.json')))
seq = ref['sequences'][int(sys.argv[1]) if len(sys.argv)>1 else 1]
toks = seq['tokens']; n=len(toks)
x = emb[toks]
def rms(x,w): return x/np.sqrt((x*x).mean(-1,keepdims=True)+1e-5)*w
freqs = 100000.0**(-np.arange(0,HD,2)/HD)
pos = np.arange(n)
ang = pos[:,None]*freqs[None,:]
cos,sin=np.cos(ang),np.sin(ang)
def rope(q):  # q [n, h, HD] adjacent pairs
    a=q[...,0::2]; b=q[...,1::2]
    out=np.empty_like(q); out[...,0::2]=a*cos[:,None,:]-b*sin[:,None,:]; out[...,1::2]=a*sin[:,None,:]+b*cos[:,None,:]; return out
for l in range(L):
    p=f'blk.{l}.'
    h=rms(x,W(p+'attn_norm.weight'))
    q=(h@W(p+'attn_q.weight').reshape(H*HD,E).T).reshape(n,H,HD)
    k=(h@W(p+'attn_k.weight').reshape(KV*HD,E).T).reshape(n,KV,HD)
    v=(h@W(p+'attn_v.weight').reshape(KV*HD,E).T).reshape(n,KV,HD)
    q=rope(q);k=rope(k)
    out=np.zeros((n,H,HD))
    mask=np.triu(np.full((n,n),-np.inf),1)
    for hh in range(H):
        kv=hh//(H//KV)
        s=q[:,hh,:]@k[:,kv,:].T/np.sqrt(HD)+mask
        s=np.exp(s-s.max(-1,keepdims=True)); s/=s.sum(-1,keepdims=True)
        out[:,hh,:]=s@v[:,kv,:]
    x=x+out.reshape(n,H*HD)@W(p+'attn_output.weight').reshape(E,H*HD).T
    h=rms(x,W(p+'ffn_norm.weight'))
    g=h@W(p+'ffn_gate.weight').reshape(1536,E).T; u=h@W(p+'ffn_up.weight').reshape(1536,E).T
    x=x+((g/(1+np.exp(-g)))*u)@W(p+'ffn_down.weight').reshape(E,1536).T
h=rms(x,W('output_norm.weight'))
lg=h@emb.T
lp=lg-lg.max(-1,keepdims=True); lp=lp-np.log(np.exp(lp).sum(-1,keepdims=True))
agree=0; diffs=[]
for i,pp in enumerate(seq['positions']):
    top=pp['top']
    agree+= int(np.argmax(lp[i])==top[0][0])
    diffs+= [abs(lp[i][t]-v) for t,v in top]
print('float64 ref vs llama.cpp: agree',agree,'/',n,'mean',np.mean(diffs),'max',np.max(diffs))

