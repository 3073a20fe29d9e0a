#!/usr/bin/perl
# relay.pl HOST PORT: the command qemu's user-net runs for each guest
# connection to a forward (guestfwd=tcp:IP:PORT-cmd:perl relay.pl HOST PORT;
# test/helpers/vm.ts). stdin/stdout is libslirp's end of the connection, one
# socket; this copies bytes between it and a new TCP connection to HOST:PORT.
#
# Why not `busybox nc`: libslirp's end is a loopback TCP socket without
# TCP_NODELAY, and it writes each guest segment (<= 1460 bytes) separately.
# Nagle holds the second segment of a request until the first is ACKed, and a
# relay that also sends replies is in delayed-ACK ("pingpong") mode: every
# request larger than one segment (an NBD write of 4 KiB) waited ~40 ms. So
# this relay sets TCP_QUICKACK on its slirp side after every read (the kernel
# clears it again) and TCP_NODELAY on the host side. Reads of the guest's
# EOF half-close the host connection; the host's EOF ends the relay, which
# closes the guest's connection.
use strict;
use warnings;
use Socket qw(IPPROTO_TCP TCP_NODELAY SHUT_WR);
use IO::Socket::INET;

my ($host, $port) = @ARGV;
die "usage: relay.pl HOST PORT\n" unless defined $port;
my $TCP_QUICKACK = 12; # linux/tcp.h; Socket.pm may not export it
my $srv = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp') or exit 1;
setsockopt($srv, IPPROTO_TCP, TCP_NODELAY, 1);
open(my $guest, '+<&=', 0) or exit 1;
binmode $guest;
binmode $srv;
my $quick = sub { setsockopt($guest, IPPROTO_TCP, $TCP_QUICKACK, 1) };
$quick->();

sub put {
  my ($fh, $buf) = @_;
  my $off = 0;
  while ($off < length $buf) {
    my $n = syswrite($fh, $buf, length($buf) - $off, $off);
    return 0 unless defined $n;
    $off += $n;
  }
  return 1;
}

my $guest_open = 1;
for (;;) {
  my $rin = '';
  vec($rin, fileno($guest), 1) = 1 if $guest_open;
  vec($rin, fileno($srv), 1) = 1;
  my $n = select(my $rout = $rin, undef, undef, undef);
  next if $n < 0 && $!{EINTR};
  exit 1 if $n < 0;
  if ($guest_open && vec($rout, fileno($guest), 1)) {
    my $r = sysread($guest, my $buf, 1 << 18);
    if (!$r) {
      $guest_open = 0;
      shutdown($srv, SHUT_WR);
    } else {
      exit 0 unless put($srv, $buf);
      $quick->();
    }
  }
  if (vec($rout, fileno($srv), 1)) {
    my $r = sysread($srv, my $buf, 1 << 18);
    exit 0 unless $r;
    exit 0 unless put($guest, $buf);
  }
}
