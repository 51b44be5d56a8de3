// Demo sign-in: a user id in, a dev token out (via AuthService). The form stays available while
// signed in so another user can be picked without signing out first.
import { ChangeDetectionStrategy, Component, inject, signal } from '@angular/core';

import { AuthService } from '../core/auth.service';
import { problemMessage } from '../core/problem';

@Component({
  selector: 'app-sign-in',
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <form class="sign-in" (submit)="submit($event)" aria-label="Sign in">
      <label for="user-id">User id</label>
      <input
        #userIdInput
        id="user-id"
        name="userId"
        autocomplete="username"
        autocapitalize="none"
        spellcheck="false"
        required
        [value]="draft()"
        (input)="draft.set(userIdInput.value)"
      />
      <button type="submit" [disabled]="busy()">Sign in</button>
      @if (auth.signedIn()) {
        <button type="button" class="secondary" (click)="signOut()">Sign out</button>
      }
      <p class="who" role="status" data-testid="signed-in-user">
        @if (auth.userId(); as user) {
          Signed in as <strong>{{ user }}</strong>
        } @else {
          Not signed in
        }
      </p>
      @if (error(); as message) {
        <p class="error" role="alert" data-testid="sign-in-error">{{ message }}</p>
      }
    </form>
  `,
})
export class SignIn {
  protected readonly auth = inject(AuthService);
  protected readonly draft = signal(this.auth.userId() ?? 'alice');
  protected readonly busy = signal(false);
  protected readonly error = signal<string | null>(null);

  protected async submit(event: Event): Promise<void> {
    event.preventDefault();
    if (this.busy()) return;
    this.busy.set(true);
    this.error.set(null);
    try {
      await this.auth.signIn(this.draft());
    } catch (error) {
      this.error.set(problemMessage(error, 'Sign-in failed.'));
    } finally {
      this.busy.set(false);
    }
  }

  protected signOut(): void {
    this.error.set(null);
    this.auth.signOut();
  }
}
