"""Start fakepve (PyPI `fakepve`, installed into tools/e2e/.venv by tools/test.sh) for tests.

fakepve's own command line has no API token option, so this launcher builds the server from
fakepve's Python API: one node, an API token, an LXC template on `local`, a cloud-init template
VM for QEMU clones, a fresh self-signed certificate, all on a free port of a loopback address.
It prints one JSON line (url, token id, token file, certificate file, SHA-256 fingerprint,
control URL) and serves until its stdin closes.

The control endpoint (plain HTTP on 127.0.0.1, for the test that started it) exposes fakepve's
request log, its guests, its failure injection and a stand-in for a DHCP server (fakepve has none), so tests can assert the exact bytes the
backend sent where fakepve is more lenient than real PVE.
"""

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys

from aiohttp import web
from fakepve.certs import make_cert
from fakepve.server import FakePve


def fingerprint(der):
    digest = hashlib.sha256(der).hexdigest().upper()
    return ':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as out:
        out.write(text)


def guest_view(kind, guest):
    view = {'type': kind, 'vmid': guest.vmid, 'node': guest.node, 'status': guest.status,
            'template': bool(guest.template), 'config': dict(guest.config)}
    agent = getattr(guest, 'agent', None)
    if agent and agent.get('interfaces'):
        view['agent_ipv4'] = agent['interfaces'][-1]['ip-addresses'][0]['ip-address']
    return view


def control_app(pve):
    async def requests(_request):
        out = [[m, p, b.decode('utf-8', 'replace')] for (m, p, b) in pve.requests]
        return web.json_response(out)

    async def guests(_request):
        out = [guest_view('lxc', ct) for ct in pve.cts] + [guest_view('qemu', vm) for vm in pve.vms]
        return web.json_response(out)

    async def fail(request):
        v = await request.json()
        pve.fail(v['method'], v['suffix'], status=v['status'], message=v['message'], times=v.get('times'))
        return web.json_response({})

    async def add_ct(request):
        v = await request.json()
        pve.add_ct(int(v['vmid']), v.get('hostname'), node=v['node'], status=v.get('status', 'stopped'),
                   config=v.get('config', {}))
        return web.json_response({})

    async def add_vm(request):
        v = await request.json()
        pve.add_vm(int(v['vmid']), v['name'], node=v['node'], status=v.get('status', 'stopped'),
                   config=v.get('config', {}))
        return web.json_response({})

    async def add_template(request):
        v = await request.json()
        pve.store_file(v['storage'], v['name'], 1024 * 1024, content='vztmpl')
        return web.json_response({})

    async def lease(request):
        """A DHCP lease for a running guest: a container's net0 gets the address (what its
        interfaces show); a VM's guest agent starts answering with it."""
        v = await request.json()
        ct = pve.ct(int(v['vmid']))
        if ct is not None:
            ct.config['net0'] = ct.config['net0'].replace('ip=dhcp', 'ip={0}/32'.format(v['ip']))
        else:
            pve.vm(int(v['vmid'])).agent = {'interfaces': [
                {'name': 'lo', 'ip-addresses': [{'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4', 'prefix': 8}]},
                {'name': 'eth0', 'ip-addresses': [{'ip-address': v['ip'], 'ip-address-type': 'ipv4', 'prefix': 32}]}]}
        return web.json_response({})

    app = web.Application()
    app.router.add_post('/lease', lease)
    app.router.add_get('/requests', requests)
    app.router.add_get('/guests', guests)
    app.router.add_post('/fail', fail)
    app.router.add_post('/ct', add_ct)
    app.router.add_post('/vm', add_vm)
    app.router.add_post('/template', add_template)
    return app


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dir', required=True, help='where the certificate and the token file go')
    parser.add_argument('--host', default='127.0.0.1', help='loopback address to listen on')
    parser.add_argument('--node', default='pve')
    parser.add_argument('--token-id', default='paygress@pve!paygress')
    parser.add_argument('--template', action='append', default=[],
                        help='STORAGE:vztmpl/NAME made present (repeatable)')
    parser.add_argument('--qemu-template', type=int, action='append', default=[],
                        help='vmid of a cloud-init template VM to make (repeatable)')
    parser.add_argument('--create-secs', type=float, default=2,
                        help='PVE seconds a container create or clone task takes')
    parser.add_argument('--time-scale', type=float, default=0.02,
                        help='real seconds per PVE second (tasks run asynchronously unless 0)')
    parser.add_argument('--grants', help='JSON file [{"path": P, "privileges": [..]}, ..]: the token '
                        'and its user get exactly these (fakepve then enforces per-path ACLs; '
                        'without it every user may do anything)')
    args = parser.parse_args()

    pve = FakePve(user='root@pam', password=secrets.token_hex(16), host=args.host, port=0)
    pve.time_scale = args.time_scale
    pve.add_node(args.node)
    # Tasks take some PVE seconds, so clients really poll them.
    pve.ct_secs.update(create=args.create_secs, clone=args.create_secs, destroy=2)
    secret = secrets.token_hex(18)
    pve.apitokens[args.token_id] = secret
    if args.grants:
        with open(args.grants) as f:
            grants = json.load(f)
        pve.acl = {}
        for g in grants:
            # Both, as bootstrap does (with privsep PVE takes the intersection of the two;
            # fakepve takes either, so a privilege left out here is missing for both).
            for who in (args.token_id, args.token_id.split('!')[0]):
                pve.grant(who, g['path'], *g['privileges'])
    for volid in args.template:
        storage, _, name = volid.partition(':')
        pve.store_file(storage, name.split('/', 1)[1], 1024 * 1024, content='vztmpl')
    for vmid in args.qemu_template:
        pve.add_vm(vmid, 'ci-template-{0}'.format(vmid), node=args.node, template=True, config={
            'scsi0': 'local-lvm:base-{0}-disk-0,size=4G'.format(vmid),
            'ide2': 'local-lvm:vm-{0}-cloudinit,media=cdrom'.format(vmid),
            'net0': 'virtio=BC:24:11:00:00:01,bridge=vmbr0', 'memory': 1024, 'cores': 1,
            'ostype': 'l26', 'boot': 'order=scsi0', 'scsihw': 'virtio-scsi-pci'})

    os.makedirs(args.dir, exist_ok=True)
    certfile, keyfile, der = make_cert(args.dir, hosts=(args.host,))
    await pve.start(certfile, keyfile)
    os.unlink(keyfile)
    token_file = os.path.join(args.dir, 'token')
    write_secret(token_file, secret)

    runner = web.AppRunner(control_app(pve))
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    control_port = runner.addresses[0][1]

    print(json.dumps({'url': pve.url, 'node': args.node, 'token_id': args.token_id, 'token_file': token_file,
                      'cert_file': certfile, 'fingerprint': fingerprint(der),
                      'control': 'http://127.0.0.1:{0}'.format(control_port)}), flush=True)
    # Serve until stdin closes: the test that started us holds it, so we end when it does,
    # however it ends.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    await runner.cleanup()
    await pve.stop()


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
