/* verbs transport: placeholder until the implementation lands (reports "not compiled in"). */
#include "transport/registry.h"

const spk_transport *spk_transport_verbs(void)
{
    return NULL;
}
